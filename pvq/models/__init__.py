"""pvq.models"""
