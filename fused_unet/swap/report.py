"""What ``swap`` did: the fused patterns, the graphs it rewrote, and what it left alone and why."""
from dataclasses import dataclass, field


@dataclass
class Fusion:
    pattern: str  # e.g. "conv+bn+act+maxpool"
    op: str  # the fused op that runs it
    parts: tuple  # the modules / functions it replaced, in graph order


@dataclass
class SwapReport:
    """What ``swap`` did: ``fused`` patterns, ``traced`` modules (torch.fx, or "[torch.compile]"), ``untraced``
    (module, why torch.fx could not), ``swapped`` module counts, ``left_alone`` (what, reason). ``print(report)``
    gives a table."""
    model: str
    fused: list = field(default_factory=list)
    traced: list = field(default_factory=list)
    untraced: list = field(default_factory=list)
    swapped: dict = field(default_factory=lambda: {"Conv2d": 0, "MaxPool2d": 0, "ConvTranspose2d": 0,
                                                    "ReLU fused": 0})
    left_alone: list = field(default_factory=list)

    def add_fusion(self, pattern, op, parts):
        fusion = Fusion(pattern, op, tuple(parts))
        if fusion not in self.fused:  # a torch.compile capture meets the same graph again in each mode
            self.fused.append(fusion)

    def add_left_alone(self, entry):
        if entry not in self.left_alone:
            self.left_alone.append(entry)

    def counts(self):
        """Number of fused patterns per pattern name."""
        out = {}
        for fusion in self.fused:
            out[fusion.pattern] = out.get(fusion.pattern, 0) + 1
        return out

    def table(self):
        lines = [f"fused_unet.swap report for {self.model}"]
        lines.append("graphs rewritten (torch.fx; [torch.compile] where fx could not): "
                     f"{', '.join(t or '(whole model)' for t in self.traced) or 'none'}")
        lines += [f"  not traced: {name or '(whole model)'}: {why}" for name, why in self.untraced]
        lines.append(f"fused patterns: {len(self.fused)}")
        width = max([len(f.pattern) for f in self.fused] + [7])
        lines += [f"  {f.pattern:<{width}}  -> {f.op:<22} {', '.join(f.parts)}" for f in self.fused]
        lines.append("fused_unet.nn classes swapped in: " + ", ".join(f"{k} {v}" for k, v in self.swapped.items()))
        lines.append(f"left alone: {len(self.left_alone)}")
        lines += [f"  {what}: {why}" for what, why in self.left_alone]
        return "\n".join(lines)

    __str__ = table
