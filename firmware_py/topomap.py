"""Spectral topography images from band powers, written straight into the model's int8 input.

With fixed electrodes, interpolating per-electrode values onto the image grid is a fixed
linear map: ``image[p] = sum_ch W[p, ch] * z[ch]``. The host computes ``W`` once from the
montage (azimuthal equidistant projection + Clough-Tocher interpolation, see
``painhelm.train.topomap``) and ships it in the bundle, so the helmet needs no scipy.

``z`` is the band power normalised with the training mean and standard deviation per
(band, channel). Image layout is the model's: ``[frame][band][row][col]``.
"""

from math import floor


def quantize_value(x, scale, zero_point):
    """int8 quantization rule shared by helmet and host: clamp(floor(x * (1/scale) + 0.5) + zp).

    Multiplying by the reciprocal (not dividing) is part of the definition, so that the
    host's numpy version rounds exactly like the helmet.
    """
    q = int(floor(x * (1.0 / scale) + 0.5)) + zero_point
    if q < -128:
        return -128
    if q > 127:
        return 127
    return q


def images_int8(logbp, mean, inv_std, W, n_frames, n_bands, n_ch, n_pix, scale, zero_point, z, out):
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
    """
    inv_scale = 1.0 / scale
    for fr in range(n_frames):
        for b in range(n_bands):
            src = (fr * n_bands + b) * n_ch
            nb = b * n_ch
            for ch in range(n_ch):
                z[ch] = (logbp[src + ch] - mean[nb + ch]) * inv_std[nb + ch]
            dst = (fr * n_bands + b) * n_pix
            for p in range(n_pix):
                row = p * n_ch
                acc = 0.0
                for ch in range(n_ch):
                    acc += W[row + ch] * z[ch]
                q = int(floor(acc * inv_scale + 0.5)) + zero_point
                out[dst + p] = -128 if q < -128 else (127 if q > 127 else q)
    return out
