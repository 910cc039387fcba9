"""conv2d, max_pool2d, flatten and embedding in numpy, naive: `X_forward(...) -> (out, cache)`,
`X_backward(dout, cache) -> grads`, float64. Names and shapes mirror functional_nn.layers
(weight is (C_out, C_in / groups, kh, kw), as torch.nn.Conv2d)."""

from __future__ import annotations

import numpy as np


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _window(xp, p, q, dil, stride, out_hw):
    """The (N, C, H_out, W_out) view of padded x that kernel tap (p, q) meets."""
    (dh, dw), (sh, sw), (ho, wo) = dil, stride, out_hw
    return xp[
        :, :, p * dh : p * dh + sh * (ho - 1) + 1 : sh, q * dw : q * dw + sw * (wo - 1) + 1 : sw
    ]


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """out[n, o, i, j] = b[o] + sum_{c, p, q} xpad[n, g Cg + c, i sh + p dh, j sw + q dw] w[o, c, p, q],
    g = o // (C_out / groups), Cg = C_in / groups: one tap (p, q) at a time.

    Args:
        x: (N, C_in, H, W); w: (C_out, C_in / groups, kh, kw); b: (C_out,) or None.
    Returns:
        out: (N, C_out, H_out, W_out); cache.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    (ph, pw), (kh, kw) = padding, w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cg, og = w.shape[1], w.shape[0] // groups
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for g in range(groups):
        ci, co = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for p in range(kh):
            for q in range(kw):
                win = _window(xp, p, q, dilation, stride, (ho, wo))[:, ci]
                out[:, co] += np.einsum("nchw,oc->nohw", win, w[co, :, p, q])
    if b is not None:
        out += b[None, :, None, None]
    return out, (xp, w, b, stride, padding, dilation, groups)


def conv2d_backward(dout, cache):
    """dx, dw, db of conv2d_forward: each tap's contribution scattered back.

    Args:
        dout: (N, C_out, H_out, W_out).
    Returns:
        dx: (N, C_in, H, W); dw: w's shape; db: (C_out,) or None.
    """
    xp, w, b, stride, (ph, pw), dilation, groups = cache
    kh, kw = w.shape[2:]
    out_hw = dout.shape[2:]
    cg, og = w.shape[1], w.shape[0] // groups
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(groups):
        ci, co = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for p in range(kh):
            for q in range(kw):
                win = _window(xp, p, q, dilation, stride, out_hw)[:, ci]
                dw[co, :, p, q] = np.einsum("nohw,nchw->oc", dout[:, co], win)
                dwin = _window(dxp, p, q, dilation, stride, out_hw)[:, ci]
                dwin += np.einsum("nohw,oc->nchw", dout[:, co], w[co, :, p, q])  # a view of dxp
    dx = dxp[:, :, ph : dxp.shape[2] - ph, pw : dxp.shape[3] - pw]
    return dx, dw, (None if b is None else dout.sum(axis=(0, 2, 3)))


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1):
    """out[n, c, i, j] = max over the window at (i sh, j sw) of x padded with -inf; the cache
    keeps the first maximum's position in row-major window order (np.argmax's choice).

    Args:
        x: (N, C, H, W).
    Returns:
        out: (N, C, H_out, W_out); cache.
    """
    kh, kw = _pair(kernel_size)
    stride = (kh, kw) if stride is None else _pair(stride)
    (ph, pw), dilation = _pair(padding), _pair(dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    ho = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    taps = np.stack(
        [_window(xp, p, q, dilation, stride, (ho, wo)) for p in range(kh) for q in range(kw)]
    )  # (kh kw, N, C, H_out, W_out)
    first = np.argmax(taps, axis=0)
    out = np.take_along_axis(taps, first[None], axis=0)[0]
    return out, (x.shape, first, (kh, kw), stride, (ph, pw), dilation)


def max_pool2d_backward(dout, cache):
    """dx: each dout goes to its window's first maximum; overlapping windows add. Shape x's."""
    shape, first, (kh, kw), stride, (ph, pw), dilation = cache
    n, c, h, w = shape
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for t in range(kh * kw):
        p, q = divmod(t, kw)
        _window(dxp, p, q, dilation, stride, dout.shape[2:])[...] += dout * (first == t)
    return dxp[:, :, ph : ph + h, pw : pw + w]


def flatten_forward(x, start_dim=1):
    """out: x with dims start_dim.. merged; (N, d1 ... dk) by default. Cache: x's shape."""
    return x.reshape(*x.shape[:start_dim], -1), x.shape


def flatten_backward(dout, cache):
    """dx = dout reshaped to x's shape."""
    return dout.reshape(cache)


def embedding_forward(w, idx, padding_idx=None):
    """out = w[idx]. Args: w (V, D); idx integers of any shape. Returns: out idx.shape + (D,)."""
    return w[idx], (w.shape, idx, padding_idx)


def embedding_backward(dout, cache):
    """dw[v] = sum of dout over the positions where idx == v; 0 for the padding row. Shape (V, D)."""
    shape, idx, padding_idx = cache
    dw = np.zeros(shape)
    np.add.at(dw, idx, dout)
    if padding_idx is not None:
        dw[padding_idx] = 0.0
    return dw
