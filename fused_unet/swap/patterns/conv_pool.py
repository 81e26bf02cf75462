"""A conv chain whose output is also 2x2 max-pooled -> the conv+pool kernel (both outputs from one launch)."""
import operator

from fused_unet.swap.runtime import _fused_conv_pool


def match(g, chain):
    """The 2x2 max-pool reading the chain's output (a stride-1 'same' conv's), or None."""
    if g.conv(chain.conv, strided=False)[1]:
        return None
    last = chain.nodes[-1]
    return next((user for user in last.users if user.args[:1] == (last,) and g.is_pool(user)), None)


def rewrite(g, chain, pool):
    conv, bn = chain.fused_args(g)
    new = g.replace(chain.nodes, _fused_conv_pool, (chain.conv.args[0], conv, bn), chain.epilogue())
    with g.graph.inserting_after(new):
        full = g.graph.call_function(operator.getitem, (new, 0))
    with g.graph.inserting_after(full):
        pooled = g.graph.call_function(operator.getitem, (new, 1))
    for node, value in ((full, new), (pooled, pool)):  # new stands for the pair now, not the conv's output
        if "example_value" in value.meta:
            node.meta["example_value"] = value.meta["example_value"]
    new.meta.pop("example_value", None)
    new.replace_all_uses_with(full, delete_user_cb=lambda user: user not in (full, pooled))
    pool.replace_all_uses_with(pooled)
    g.graph.erase_node(pool)
    g.report.add_fusion("conv" + chain.suffix() + "+maxpool", "conv2d_pool",
                        tuple(g.name(n) for n in chain.nodes) + (g.name(pool),))
