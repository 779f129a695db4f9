"""Spectral topography images from band powers, written straight into the model's int8 input.

With fixed electrodes, interpolating per-electrode values onto the image grid is a fixed
linear map: ``image[p] = sum_ch W[p, ch] * z[ch]``. The host computes ``W`` once from the
montage (azimuthal equidistant projection + Clough-Tocher interpolation, see
``painhelm.train.topomap``) and ships it in the bundle, so the helmet needs no scipy.

``z`` is the band power normalised with the training mean and standard deviation per
(band, channel). Image layout is the model's: ``[frame][band][row][col]``.
"""

try:
    from .interp import quantize_value
except ImportError:
    from interp import quantize_value


def head_mask(W, n_pix, n_ch):
    """bytearray of n_pix flags: 1 where row ``p`` of W is not all zero (inside the head)."""
    mask = bytearray(n_pix)
    for p in range(n_pix):
        row = p * n_ch
        for ch in range(n_ch):
            if W[row + ch] != 0.0:
                mask[p] = 1
                break
    return mask


def images_int8(logbp, mean, inv_std, W, n_frames, n_bands, n_ch, n_pix, scale, zero_point, z, out,
                mask=None, packed=False):
    """Write quantized images of one window into ``out``.

    Parameters
    ----------
    logbp : array('f'), length n_frames * n_bands * n_ch
        Log band powers (``dsp.BandPower.compute`` layout).
    mean, inv_std : array('f'), length n_bands * n_ch
        Training normalisation per (band, channel).
    W : array('f'), length n_pix * n_ch
        Interpolation matrix, row-major (pixel, channel).
    scale, zero_point : float, int
        Quantization of the model's input tensor.
    z : array('f'), length n_ch
        Scratch buffer (caller-owned, reused).
    out : array('b') or bytearray, length n_frames * n_bands * n_pix
        The model's int8 input.
    mask : bytearray of n_pix flags, optional
        ``head_mask(W, ...)``: pixels outside the head are 0 (the zero point) without the
        n_ch multiply-adds; a quarter to a half of the grid.
    packed : bool
        W holds only the rows where ``mask`` is set (``bundle.read_topomap_packed``).
    """
    zp = quantize_value(0.0, scale, zero_point)
    for fr in range(n_frames):
        for b in range(n_bands):
            src = (fr * n_bands + b) * n_ch
            nb = b * n_ch
            for ch in range(n_ch):
                z[ch] = (logbp[src + ch] - mean[nb + ch]) * inv_std[nb + ch]
            dst = (fr * n_bands + b) * n_pix
            r = 0
            for p in range(n_pix):
                if mask is not None and not mask[p]:
                    out[dst + p] = zp
                    continue
                row = (r if packed else p) * n_ch
                r += 1
                acc = 0.0
                for ch in range(n_ch):
                    acc += W[row + ch] * z[ch]
                out[dst + p] = quantize_value(acc, scale, zero_point)
    return out
