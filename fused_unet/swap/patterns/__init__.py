"""The fusions, one file each: a matcher that reads a captured graph through ``SwapGraph`` (either dialect) and a
rewriter that replaces what it matched by one call of a fused callable (``swap.runtime``).

Each conv-chain pattern has ``match(g, chain)`` (what it found after the conv chain ``chain``, or None) and
``rewrite(g, chain, found)``; ``CHAIN_PATTERNS`` is the order they are tried in for each conv (the first match
wins). A new fusion is a new file and an entry here; a pattern that is not a conv chain's (``concat_conv_transpose``,
``norm_act``, ``single_layers``) has ``swap(g)``, which ``swap.rewrite`` calls in its place."""
from fused_unet.swap.patterns import concat_conv, conv_act, conv_add, conv_pool

CHAIN_PATTERNS = (concat_conv, conv_pool, conv_add, conv_act)
