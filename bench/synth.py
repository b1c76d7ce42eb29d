"""Synthetic artifact bytes the benches share: text shaped like Inductor's generated
Triton source (repetitive, as a kernel file is), for blobs that compress as real ones do."""

KERNEL_TEXT = b"".join(
    b"    tmp%d = tl.load(in_ptr0 + (x0 + %d), xmask, eviction_policy='evict_last')\n" % (i, i * 7)
    for i in range(20_000)
)
