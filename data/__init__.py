"""vidlm.data"""
