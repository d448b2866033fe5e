"""vidlm.tokenizer"""
