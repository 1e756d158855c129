"""nnU-Net's default training augmentations, as pure JAX functions of one patch and a key.

``augment(key, image, seg)`` (image ``(C, *S)``, labels ``(*S)``) applies, each drawn
independently with nnU-Net's probability: rotation (p 0.2, +-30 degrees per axis in 3-D, +-180
in 2-D) and scaling
(p 0.2, 0.7-1.4) about the patch centre (linear interpolation for images, nearest for labels;
outside the patch is 0); Gaussian noise (p 0.1, variance U(0, 0.1)); Gaussian blur (p 0.2,
sigma U(0.5, 1)); multiplicative brightness (p 0.15, U(0.75, 1.25)); contrast (p 0.15,
U(0.75, 1.25) about the mean, clipped to the original range); low-resolution simulation
(p 0.25, zoom U(0.5, 1): nearest down, linear up); gamma (p 0.3, U(0.7, 1.5), on the image
rescaled to [0, 1], mean and std restored; with p 0.1 on the inverted image); mirroring
(p 0.5 per axis). All shapes are static, so ``jax.vmap`` over a batch of keys compiles once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from ife_jax.nn.init import normal


def _rotation(key, dims: int) -> jax.Array:
    if dims == 2:
        a = jax.random.uniform(key, (), minval=-math.pi, maxval=math.pi)
        return jnp.array([[jnp.cos(a), -jnp.sin(a)], [jnp.sin(a), jnp.cos(a)]])
    angles = jax.random.uniform(key, (3,), minval=-math.pi / 6, maxval=math.pi / 6)
    c, s = jnp.cos(angles), jnp.sin(angles)
    rx = jnp.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = jnp.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = jnp.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rx @ ry @ rz


def spatial(key, image, seg, *, p_rotation=0.2, p_scale=0.2):
    """Rotation and scaling about the centre (see the module docstring)."""
    shape = seg.shape
    dims = len(shape)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    rot = jnp.where(jax.random.uniform(k1) < p_rotation, _rotation(k2, dims), jnp.eye(dims))
    scale = jnp.where(
        jax.random.uniform(k3) < p_scale, jax.random.uniform(k4, minval=0.7, maxval=1.4), 1.0
    )
    centre = (jnp.asarray(shape, jnp.float32) - 1) / 2
    grid = jnp.stack(
        jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in shape), indexing="ij")
    )
    coords = jnp.einsum("ij,j...->i...", rot / scale, grid - centre.reshape(-1, *(1,) * dims))
    coords = coords + centre.reshape(-1, *(1,) * dims)
    img = jax.vmap(lambda c: map_coordinates(c, list(coords), order=1, mode="constant"))(image)
    lab = map_coordinates(seg.astype(jnp.float32), list(coords), order=0, mode="constant")
    return img, lab.astype(seg.dtype)


def _blur(x, sigma):
    """Separable Gaussian blur of one ``(*S)`` channel, truncated at 4 sigma (max sigma 1)."""
    r = 4
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    for axis in range(x.ndim):
        x = jnp.apply_along_axis(
            lambda v: jnp.convolve(jnp.pad(v, r, mode="edge"), k, mode="valid"), axis, x
        )
    return x


def intensity(key, image, *, dims: int):
    """Noise, blur, brightness, contrast, low resolution and gamma on ``(C, *S)``."""
    ks = jax.random.split(key, 16)

    def maybe(k, p, new, old):
        return jnp.where(jax.random.uniform(k) < p, new, old)

    var = jax.random.uniform(ks[0], maxval=0.1)
    noisy = image + jnp.sqrt(var) * normal(ks[1], image.shape)
    x = maybe(ks[2], 0.1, noisy, image)

    sigma = jax.random.uniform(ks[3], minval=0.5, maxval=1.0)
    x = maybe(ks[4], 0.2, jax.vmap(lambda c: _blur(c, sigma))(x), x)

    x = maybe(ks[5], 0.15, x * jax.random.uniform(ks[6], minval=0.75, maxval=1.25), x)

    axes = tuple(range(1, dims + 1))
    f = jax.random.uniform(ks[7], minval=0.75, maxval=1.25)
    mean = x.mean(axes, keepdims=True)
    lo, hi = x.min(axes, keepdims=True), x.max(axes, keepdims=True)
    x = maybe(ks[8], 0.15, jnp.clip((x - mean) * f + mean, lo, hi), x)

    zoom = jax.random.uniform(ks[9], minval=0.5, maxval=1.0)
    shape = x.shape[1:]
    coords = jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in shape), indexing="ij")
    coarse = [jnp.floor(c * zoom) / zoom for c in coords]  # nearest on a grid zoom times coarser
    low = jax.vmap(lambda c: map_coordinates(c, coarse, order=1, mode="nearest"))(x)
    x = maybe(ks[10], 0.25, low, x)

    def gamma(v, g):
        m, s = v.mean(axes, keepdims=True), v.std(axes, keepdims=True)
        lo, hi = v.min(axes, keepdims=True), v.max(axes, keepdims=True)
        r = hi - lo + 1e-7
        out = ((v - lo) / r) ** g * r + lo
        out = (out - out.mean(axes, keepdims=True)) / (out.std(axes, keepdims=True) + 1e-8)
        return out * s + m

    g = jax.random.uniform(ks[11], minval=0.7, maxval=1.5)
    x = maybe(ks[12], 0.1, -gamma(-x, g), x)
    x = maybe(ks[13], 0.3, gamma(x, g), x)
    return x


def mirror(key, image, seg):
    """Flips each spatial axis with probability 0.5."""
    dims = seg.ndim
    flips = jax.random.uniform(key, (dims,)) < 0.5
    for a in range(dims):
        image = jnp.where(flips[a], jnp.flip(image, a + 1), image)
        seg = jnp.where(flips[a], jnp.flip(seg, a), seg)
    return image, seg


def augment(key, image, seg):
    """All of nnU-Net's default augmentations on one ``(C, *S)`` patch and its ``(*S)`` labels."""
    k1, k2, k3 = jax.random.split(key, 3)
    image, seg = spatial(k1, image, seg)
    image = intensity(k2, image, dims=seg.ndim)
    return mirror(k3, image, seg)
