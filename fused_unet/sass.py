"""The static main-loop report: how close a compiled GEMM loop can come to tensor-core peak, read off its SASS.

An SM issues 4 warp-instructions per clock. A loop body of ``L`` SASS instructions (per warp) holding tensor-core
work ``F`` (the sum of m·n·k of its MMA instructions) can therefore reach at most ``min(1, F / (peak · L))`` of
the tensor-core peak, where ``peak`` is the SM's dense FMA per clock for the operand type (sm_90: 2048 16-bit,
1024 TF32). On sm_90 a warpgroup's four warps issue the same ``HGMMA`` for one shared piece of work, so F counts
each HGMMA once; on sm_80 every warp's ``HMMA`` is its own work, so the bound is ``4 F / (peak · L)``.
``headroom`` is the same ratio uncapped: how many times over the loop could issue its MMAs. The bound says
nothing of memory stalls or occupancy: it is the most a loop can do when its loads arrive in time. The loads it
issues are read off too (128-bit ``cp.async`` / TMA are what a fast loop uses), and so is integer division
(``I2F.U32.RP``, the start of the reciprocal sequence ptxas emits for ``//`` and ``%``).
"""
import os
import re
import shutil
import subprocess
import tempfile

# Dense tensor-core FMA per SM per clock by (compute capability, operand class).
PEAK_FMA = {(90, "16bit"): 2048, (90, "tf32"): 1024, (80, "16bit"): 1024, (80, "tf32"): 512}
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"^HMMA\.(16)(8)(16|8)")  # m16n8k16 / m16n8k8
_WAIT_DEPTH = re.compile(r"gsb0,\s*0x([0-9a-f]+)")


def tool(name):
    """Path of a CUDA binary utility (nvdisasm, cuobjdump): Triton's bundled copy first, then PATH."""
    try:
        import triton

        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    return shutil.which(name)


def read_cubin(utility, cubin, *args):
    """What ``utility`` (nvdisasm, cuobjdump) prints for ``cubin`` with ``args``, or None without the utility."""
    path = tool(utility)
    if path is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([path, *args, f.name], capture_output=True, text=True).stdout


def disassemble(cubin):
    """The cubin's SASS as nvdisasm prints it (``-c``: code only; ``-ndf``: no dataflow analysis, a fifth faster and
    the same text for Triton's code, which has no branch-stack jumps), or None without nvdisasm."""
    return read_cubin("nvdisasm", cubin, "-c", "-ndf")


def _instructions(sass):
    """[(opcode, operands)] and {label: index of the next instruction}."""
    instructions, labels = [], {}
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        found = _INSTRUCTION.match(line)
        if found:
            instructions.append((found.group(1), found.group(2)))
    return instructions, labels


def _mma_work(opcode):
    """(m·n·k, is the instruction a warpgroup HGMMA) of an MMA opcode, or (0, False)."""
    if (shape := _HGMMA.match(opcode)):
        m, n, k = map(int, shape.groups())
        return m * n * k, True
    if (shape := _HMMA.match(opcode)):
        m, n, k = map(int, shape.groups())
        return m * n * k, False
    return 0, False


def load_kind(opcode):
    """How a global load is issued: 'cp.async.128', 'cp.async.narrow', 'tma', 'ldg.128', 'ldg.narrow' (or None)."""
    if opcode.startswith("LDGSTS"):
        return "cp.async.128" if opcode.endswith(".128") else "cp.async.narrow"
    if opcode.startswith("UTMALDG") or opcode.startswith("UBLKCP"):
        return "tma"
    if opcode.startswith("LDG") and not opcode.startswith("LDGDEPBAR"):
        return "ldg.128" if ".128" in opcode else "ldg.narrow"
    return None


def _loops(instructions, labels):
    """(first, last) instruction index of every loop: a branch back to a label at or before it."""
    loops = []
    for end, (opcode, operands) in enumerate(instructions):
        branch = _BRANCH.search(opcode + operands)
        if branch and labels.get(branch.group(1), end + 1) <= end:
            loops.append((labels[branch.group(1)], end))
    return loops


def local_memory_in_loops(sass):
    """How many local-memory loads and stores (``LDL``, ``STL``: register spills) sit inside a loop. A spill
    outside every loop runs once per program; inside, every iteration."""
    instructions, labels = _instructions(sass)
    inside = {i for a, b in _loops(instructions, labels) for i in range(a, b + 1)}
    return sum(1 for i in inside if instructions[i][0].startswith(("LDL", "STL")))


def main_loops(sass, cc, operand_class):
    """One report per loop whose body holds tensor-core MMA (the innermost such loop when they nest):
    instructions per iteration, MMA shapes, work, ceiling, global-load kinds and integer division."""
    instructions, labels = _instructions(sass)
    loops = _loops(instructions, labels)
    with_mma = [(a, b) for a, b in loops if any(_mma_work(op)[0] for op, _ in instructions[a:b + 1])]
    innermost = [(a, b) for a, b in with_mma if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in with_mma)]
    reports = []
    for start, end in innermost:
        body = [op for op, _ in instructions[start:end + 1]]
        work = [_mma_work(op) for op in body]
        flops = sum(w for w, _ in work)
        warpgroup = any(g for _, g in work)
        peak = PEAK_FMA.get((cc, operand_class))
        ceiling = headroom = None
        if peak:
            headroom = (flops if warpgroup else 4 * flops) / (peak * len(body))
            ceiling = min(1.0, headroom)
        kinds = {}
        for op in body:
            if (kind := load_kind(op)):
                kinds[kind] = kinds.get(kind, 0) + 1
        shapes = sorted({op.split(".F32")[0] for op in body if _mma_work(op)[0]})
        # How many wgmma groups stay in flight at the loop's waits: 0 = each waits for its own MMA (no overlap).
        waits = [int(m.group(1), 16) for op, operands in instructions[start:end + 1]
                 if op == "WARPGROUP.DEPBAR.LE" and (m := _WAIT_DEPTH.search(operands))]
        reports.append(dict(instructions=len(body), mma=shapes, wgmma_wait=min(waits) if waits else None,
                            mma_count=sum(1 for w, _ in work if w), mma_work=flops, ceiling=ceiling,
                            headroom=headroom, loads=kinds,
                            int_division=any(op.startswith("I2F") and ".RP" in op for op in body)))
    return reports


def summary(loops):
    """The report of a kernel from its MMA loops: the worst loop's ceiling (two-source kernels run both), every
    loop's instruction count, all load kinds and whether any loop divides."""
    if not loops:
        return dict(loop_instructions=None, ceiling=None, headroom=None, loads={}, int_division=False, mma=[],
                    wgmma_wait=None)
    ceilings = [loop["ceiling"] for loop in loops if loop["ceiling"] is not None]
    headrooms = [loop["headroom"] for loop in loops if loop["headroom"] is not None]
    loads = {}
    for loop in loops:
        for kind, n in loop["loads"].items():
            loads[kind] = loads.get(kind, 0) + n
    return dict(loop_instructions=[loop["instructions"] for loop in loops],
                ceiling=min(ceilings) if ceilings else None, headroom=min(headrooms) if headrooms else None,
                loads=loads,
                int_division=any(loop["int_division"] for loop in loops),
                mma=sorted({shape for loop in loops for shape in loop["mma"]}),
                wgmma_wait=min((loop["wgmma_wait"] for loop in loops if loop["wgmma_wait"] is not None), default=None))


def issue_efficiency(headroom, wgmma_wait):
    """The share of tensor-core peak a main loop can issue at: min(1, headroom), or headroom / (1 + headroom) when
    it waits for its own wgmma group before issuing the next (wait 0: the MMA and the rest of the loop take turns)."""
    if wgmma_wait == 0:
        return headroom / (1 + headroom)
    return min(1.0, headroom)


def fast_loads_only(loads):
    """Whether every global load in the loop is a 128-bit cp.async or a TMA copy."""
    return bool(loads) and set(loads) <= {"cp.async.128", "tma"}


def vector_loads_only(loads):
    """Whether every global load in the loop moves 128 bits (cp.async, TMA or a plain vector LDG): sm_80's mma.sync
    takes a transposed operand from registers, so Triton reads it with 128-bit LDG rather than cp.async."""
    return bool(loads) and set(loads) <= {"cp.async.128", "tma", "ldg.128"}
