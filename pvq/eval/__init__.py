"""pvq.eval"""
