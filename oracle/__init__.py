"""Hand-derived numpy reference code: every gradient and optimizer step, in float64.

No torch here: the oracle is checked against central differences (`gradcheck`), and functional_nn
is checked against the oracle.
"""
