#!/usr/bin/env python3
"""Per-function instruction breakdown of one arm64 bench row, from a QEMU trace (docs/bench.md).

    qemu-system-aarch64 ... -icount shift=0,sleep=off -d in_asm,exec,nochain -D trace.log
    python3 xtask/tools/qemu-trace-breakdown.py trace.log target/aarch64-unknown-none/release/bulwark \
        [--key NAME] [--cycle N]

`in_asm` prints each translation block's instructions when it is first translated; `exec` with `nochain`
prints one `Trace` line per execution of a block. The script counts every executed instruction, cuts the
run into exit cycles at Bulwark's lower-EL synchronous vector (`bulwark_el2_vectors` + 0x400: one cycle =
one guest exit, Bulwark's handling, the world switch and the guest's instructions up to its next exit),
and prints the function totals (from `llvm-nm -n` of the ELF) of the median cycle, or of cycle N, among
the cycles that executed a function whose name contains NAME. Guest instructions share the address range
of Bulwark's own code (the guest's IPAs equal Bulwark's physical addresses), so they show up under
whatever Bulwark symbol covers them (`boot_and_run` in the hypercall rows).
"""
import bisect, collections, re, subprocess, sys

def main():
    args = sys.argv[1:]
    key, cycle = None, None
    if '--key' in args:
        i = args.index('--key'); key = args[i + 1]; del args[i:i + 2]
    if '--cycle' in args:
        i = args.index('--cycle'); cycle = int(args[i + 1]); del args[i:i + 2]
    log, elf = args
    syms = []
    for l in subprocess.run(['llvm-nm', '-n', '-C', elf], capture_output=True, text=True).stdout.splitlines():
        p = l.split(' ', 2)
        if len(p) == 3 and p[1] in 'tTwW':
            syms.append((int(p[0], 16), re.sub(r'::h[0-9a-f]{16}$', '', p[2])))
    addrs = [a for a, _ in syms]
    vec = dict((n, a) for a, n in syms)['bulwark_el2_vectors'] + 0x400
    cache = {}
    def sym(pc):
        if pc not in cache:
            i = bisect.bisect_right(addrs, pc) - 1
            cache[pc] = syms[i][1] if i >= 0 else '?'
        return cache[pc]
    blocks, pending, cycles = {}, None, []
    cur, n = collections.Counter(), 0
    lines = open(log, errors='replace')
    for l in lines:
        if l.startswith('IN:'):
            pcs = []
            for l2 in lines:
                m = re.match(r'0x([0-9a-f]+):', l2)
                if not m:
                    break
                pcs.append(int(m.group(1), 16))
            pending = pcs
            continue
        m = re.match(r'Trace \d+: (0x[0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/', l)
        if not m:
            continue
        host, pc = m.group(1), int(m.group(2), 16)
        if pending and pending[0] == pc:
            blocks[host] = pending
        pending = None
        if pc == vec:
            cycles.append((n, cur))
            cur, n = collections.Counter(), 0
        for p in blocks.get(host, [pc]):
            cur[sym(p)] += 1
            n += 1
    cycles.append((n, cur))
    if cycle is not None:
        n, c = cycles[cycle]
    else:
        sel = sorted((x for x in cycles if key is None or any(key in k for k in x[1])), key=lambda x: x[0])
        n, c = sel[len(sel) // 2]
        print(f'{len(sel)} cycles' + (f' with {key}' if key else ''))
    print(f'{n} instructions in the cycle')
    for s, k in c.most_common(40):
        print(f'{k:9d}  {s}')

main()
