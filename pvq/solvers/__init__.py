"""pvq.solvers"""
