"""vidlm.lm"""
