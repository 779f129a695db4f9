"""The int8 dot product of ``interp`` as a viper kernel (MicroPython's native-integer emitter).

Imported by ``interp`` where the port compiles viper; elsewhere ``interp`` uses its plain
loop, which computes the same integers.
"""

import micropython


@micropython.viper
def dot(x: ptr8, xo: int, w: ptr8, wo: int, n: int, input_offset: int) -> int:
    """sum((x[xo+i] + input_offset) * w[wo+i]) over n int8 values stored as bytes."""
    acc = 0
    for i in range(n):
        xv = int(x[xo + i])
        if xv > 127:  # ptr8 loads are unsigned
            xv -= 256
        wv = int(w[wo + i])
        if wv > 127:
            wv -= 256
        acc += (xv + input_offset) * wv
    return acc
