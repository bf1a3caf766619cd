"""pvq.kernels"""
