"""pvq.transforms"""
