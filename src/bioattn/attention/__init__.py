"""Attention values (tuning, gradient) and the gain rules that apply them."""
