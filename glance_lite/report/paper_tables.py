"""The paper's published numbers (Wang et al., CVPR 2021), labelled as the paper's.

These are facts quoted from the paper's Tables 1, 2 and 4 so that the book can print them beside our
own results. They are never used to compute, tune or fake anything of ours. Table 3 (CIFAR-10) lives
in :mod:`glance_lite.experiments.one_class`.

Defined in :doc:`/notebooks/06_mvtec_ad`.
"""

from __future__ import annotations

__all__ = ["MVTEC_CATEGORIES", "TEXTURES", "TABLE1_PRO", "TABLE2_PIXEL_AUROC", "TABLE4_LAMBDA_PRO", "category_key"]

MVTEC_CATEGORIES: tuple[str, ...] = (
    "carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
    "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
"""The 15 MVTec AD categories in the paper's row order (textures first)."""

TEXTURES: frozenset[str] = frozenset(MVTEC_CATEGORIES[:5])


def category_key(name: str) -> str:
    """'Metal Nut' -> 'metal_nut' (the folder name)."""
    return name.strip().lower().replace(" ", "_")


TABLE1_PRO: dict[str, dict[str, float]] = {
    'Carpet': {'1-NN': 0.512, 'OC-SVM': 0.355, 'K-Means': 0.253, 'l_2 -AE': 0.456, 'VAE': 0.501, 'SSIM-AE': 0.647, 'AnoGAN': 0.204, 'CNN-FD': 0.469, 'TS': 0.879, 'Ours': 0.977},
    'Grid': {'1-NN': 0.228, 'OC-SVM': 0.125, 'K-Means': 0.107, 'l_2 -AE': 0.582, 'VAE': 0.224, 'SSIM-AE': 0.849, 'AnoGAN': 0.226, 'CNN-FD': 0.183, 'TS': 0.952, 'Ours': 0.932},
    'Leather': {'1-NN': 0.446, 'OC-SVM': 0.306, 'K-Means': 0.308, 'l_2 -AE': 0.819, 'VAE': 0.635, 'SSIM-AE': 0.561, 'AnoGAN': 0.378, 'CNN-FD': 0.641, 'TS': 0.945, 'Ours': 0.909},
    'Tile': {'1-NN': 0.822, 'OC-SVM': 0.722, 'K-Means': 0.779, 'l_2 -AE': 0.897, 'VAE': 0.87, 'SSIM-AE': 0.175, 'AnoGAN': 0.177, 'CNN-FD': 0.797, 'TS': 0.946, 'Ours': 0.883},
    'Wood': {'1-NN': 0.502, 'OC-SVM': 0.336, 'K-Means': 0.411, 'l_2 -AE': 0.727, 'VAE': 0.628, 'SSIM-AE': 0.605, 'AnoGAN': 0.386, 'CNN-FD': 0.621, 'TS': 0.911, 'Ours': 0.941},
    'Bottle': {'1-NN': 0.898, 'OC-SVM': 0.85, 'K-Means': 0.495, 'l_2 -AE': 0.91, 'VAE': 0.897, 'SSIM-AE': 0.834, 'AnoGAN': 0.62, 'CNN-FD': 0.742, 'TS': 0.931, 'Ours': 0.968},
    'Cable': {'1-NN': 0.806, 'OC-SVM': 0.431, 'K-Means': 0.513, 'l_2 -AE': 0.825, 'VAE': 0.654, 'SSIM-AE': 0.478, 'AnoGAN': 0.383, 'CNN-FD': 0.558, 'TS': 0.818, 'Ours': 0.98},
    'Capsule': {'1-NN': 0.631, 'OC-SVM': 0.554, 'K-Means': 0.387, 'l_2 -AE': 0.862, 'VAE': 0.526, 'SSIM-AE': 0.86, 'AnoGAN': 0.306, 'CNN-FD': 0.306, 'TS': 0.968, 'Ours': 0.96},
    'Hazelnut': {'1-NN': 0.861, 'OC-SVM': 0.616, 'K-Means': 0.698, 'l_2 -AE': 0.917, 'VAE': 0.878, 'SSIM-AE': 0.916, 'AnoGAN': 0.698, 'CNN-FD': 0.844, 'TS': 0.965, 'Ours': 0.962},
    'Metal Nut': {'1-NN': 0.705, 'OC-SVM': 0.319, 'K-Means': 0.351, 'l_2 -AE': 0.83, 'VAE': 0.576, 'SSIM-AE': 0.603, 'AnoGAN': 0.32, 'CNN-FD': 0.358, 'TS': 0.942, 'Ours': 0.967},
    'Pill': {'1-NN': 0.725, 'OC-SVM': 0.544, 'K-Means': 0.514, 'l_2 -AE': 0.893, 'VAE': 0.769, 'SSIM-AE': 0.83, 'AnoGAN': 0.776, 'CNN-FD': 0.46, 'TS': 0.961, 'Ours': 0.978},
    'Screw': {'1-NN': 0.604, 'OC-SVM': 0.644, 'K-Means': 0.55, 'l_2 -AE': 0.754, 'VAE': 0.559, 'SSIM-AE': 0.887, 'AnoGAN': 0.466, 'CNN-FD': 0.277, 'TS': 0.942, 'Ours': 1.0},
    'Toothbrush': {'1-NN': 0.675, 'OC-SVM': 0.538, 'K-Means': 0.337, 'l_2 -AE': 0.822, 'VAE': 0.693, 'SSIM-AE': 0.784, 'AnoGAN': 0.749, 'CNN-FD': 0.151, 'TS': 0.933, 'Ours': 0.961},
    'Transistor': {'1-NN': 0.68, 'OC-SVM': 0.496, 'K-Means': 0.399, 'l_2 -AE': 0.728, 'VAE': 0.626, 'SSIM-AE': 0.725, 'AnoGAN': 0.549, 'CNN-FD': 0.628, 'TS': 0.666, 'Ours': 0.999},
    'Zipper': {'1-NN': 0.512, 'OC-SVM': 0.355, 'K-Means': 0.253, 'l_2 -AE': 0.839, 'VAE': 0.549, 'SSIM-AE': 0.665, 'AnoGAN': 0.467, 'CNN-FD': 0.703, 'TS': 0.951, 'Ours': 0.992},
    'Mean': {'1-NN': 0.64, 'OC-SVM': 0.479, 'K-Means': 0.423, 'l_2 -AE': 0.79, 'VAE': 0.639, 'SSIM-AE': 0.694, 'AnoGAN': 0.443, 'CNN-FD': 0.515, 'TS': 0.914, 'Ours': 0.961},
}
"""Table 1 (PRO, FPR limit 0.3): row = category as printed, column = method; 'Ours' is the paper's method."""

TABLE2_PIXEL_AUROC: dict[str, dict[str, float]] = {
    'Carpet': {'SSIM-AE': 0.87, 'l_2 -AE': 0.59, 'AnoGAN': 0.54, 'CNN-FD': 0.72, 'VEVAE': 0.78, 'SMAI': 0.88, 'GDR': 0.74, 'P-Net': 0.57, 'Ours': 0.96},
    'Grid': {'SSIM-AE': 0.94, 'l_2 -AE': 0.9, 'AnoGAN': 0.58, 'CNN-FD': 0.59, 'VEVAE': 0.73, 'SMAI': 0.97, 'GDR': 0.96, 'P-Net': 0.98, 'Ours': 0.78},
    'Leather': {'SSIM-AE': 0.78, 'l_2 -AE': 0.75, 'AnoGAN': 0.64, 'CNN-FD': 0.87, 'VEVAE': 0.95, 'SMAI': 0.86, 'GDR': 0.93, 'P-Net': 0.89, 'Ours': 0.9},
    'Tile': {'SSIM-AE': 0.59, 'l_2 -AE': 0.51, 'AnoGAN': 0.5, 'CNN-FD': 0.93, 'VEVAE': 0.8, 'SMAI': 0.62, 'GDR': 0.65, 'P-Net': 0.97, 'Ours': 0.8},
    'Wood': {'SSIM-AE': 0.73, 'l_2 -AE': 0.73, 'AnoGAN': 0.62, 'CNN-FD': 0.91, 'VEVAE': 0.77, 'SMAI': 0.8, 'GDR': 0.84, 'P-Net': 0.98, 'Ours': 0.81},
    'Bottle': {'SSIM-AE': 0.93, 'l_2 -AE': 0.86, 'AnoGAN': 0.86, 'CNN-FD': 0.78, 'VEVAE': 0.87, 'SMAI': 0.86, 'GDR': 0.92, 'P-Net': 0.99, 'Ours': 0.93},
    'Cable': {'SSIM-AE': 0.82, 'l_2 -AE': 0.86, 'AnoGAN': 0.78, 'CNN-FD': 0.79, 'VEVAE': 0.9, 'SMAI': 0.92, 'GDR': 0.91, 'P-Net': 0.7, 'Ours': 0.94},
    'Capsule': {'SSIM-AE': 0.94, 'l_2 -AE': 0.88, 'AnoGAN': 0.84, 'CNN-FD': 0.84, 'VEVAE': 0.74, 'SMAI': 0.93, 'GDR': 0.92, 'P-Net': 0.84, 'Ours': 0.9},
    'Hazelnut': {'SSIM-AE': 0.97, 'l_2 -AE': 0.95, 'AnoGAN': 0.87, 'CNN-FD': 0.72, 'VEVAE': 0.98, 'SMAI': 0.97, 'GDR': 0.98, 'P-Net': 0.97, 'Ours': 0.84},
    'Metal Nut': {'SSIM-AE': 0.89, 'l_2 -AE': 0.86, 'AnoGAN': 0.76, 'CNN-FD': 0.82, 'VEVAE': 0.94, 'SMAI': 0.92, 'GDR': 0.91, 'P-Net': 0.79, 'Ours': 0.91},
    'Pill': {'SSIM-AE': 0.91, 'l_2 -AE': 0.85, 'AnoGAN': 0.87, 'CNN-FD': 0.68, 'VEVAE': 0.83, 'SMAI': 0.92, 'GDR': 0.93, 'P-Net': 0.91, 'Ours': 0.93},
    'Screw': {'SSIM-AE': 0.96, 'l_2 -AE': 0.96, 'AnoGAN': 0.8, 'CNN-FD': 0.87, 'VEVAE': 0.97, 'SMAI': 0.96, 'GDR': 0.95, 'P-Net': 1.0, 'Ours': 0.96},
    'Toothbrush': {'SSIM-AE': 0.92, 'l_2 -AE': 0.93, 'AnoGAN': 0.9, 'CNN-FD': 0.77, 'VEVAE': 0.94, 'SMAI': 0.96, 'GDR': 0.99, 'P-Net': 0.99, 'Ours': 0.96},
    'Transistor': {'SSIM-AE': 0.9, 'l_2 -AE': 0.86, 'AnoGAN': 0.8, 'CNN-FD': 0.66, 'VEVAE': 0.93, 'SMAI': 0.85, 'GDR': 0.92, 'P-Net': 0.82, 'Ours': 1.0},
    'Zipper': {'SSIM-AE': 0.88, 'l_2 -AE': 0.77, 'AnoGAN': 0.78, 'CNN-FD': 0.76, 'VEVAE': 0.78, 'SMAI': 0.9, 'GDR': 0.87, 'P-Net': 0.9, 'Ours': 0.99},
    'Mean': {'SSIM-AE': 0.86, 'l_2 -AE': 0.82, 'AnoGAN': 0.74, 'CNN-FD': 0.78, 'VEVAE': 0.86, 'SMAI': 0.89, 'GDR': 0.89, 'P-Net': 0.89, 'Ours': 0.91},
}
"""Table 2 (pixel AUROC): row = category, column = method; 'Ours' is the paper's method."""

TABLE4_LAMBDA_PRO: dict[str, dict[str, float]] = {
    'Carpet': {'0.0': 0.963, '0.2': 0.966, '0.4': 0.968, '0.6': 0.972, '0.8': 0.977, '1.0': 0.965},
    'Grid': {'0.0': 0.868, '0.2': 0.882, '0.4': 0.907, '0.6': 0.932, '0.8': 0.932, '1.0': 0.894},
    'Leather': {'0.0': 0.899, '0.2': 0.902, '0.4': 0.909, '0.6': 0.911, '0.8': 0.909, '1.0': 0.896},
    'Tile': {'0.0': 0.951, '0.2': 0.92, '0.4': 0.905, '0.6': 0.895, '0.8': 0.883, '1.0': 0.874},
    'Wood': {'0.0': 0.832, '0.2': 0.9, '0.4': 0.925, '0.6': 0.941, '0.8': 0.941, '1.0': 0.92},
    'Bottle': {'0.0': 0.928, '0.2': 0.956, '0.4': 0.965, '0.6': 0.966, '0.8': 0.968, '1.0': 0.965},
    'Cable': {'0.0': 0.941, '0.2': 0.98, '0.4': 0.991, '0.6': 0.989, '0.8': 0.98, '1.0': 0.961},
    'Capsule': {'0.0': 0.843, '0.2': 0.884, '0.4': 0.91, '0.6': 0.937, '0.8': 0.96, '1.0': 0.978},
    'Hazelnut': {'0.0': 0.937, '0.2': 0.937, '0.4': 0.949, '0.6': 0.957, '0.8': 0.962, '1.0': 0.964},
    'Metal Nut': {'0.0': 0.921, '0.2': 0.93, '0.4': 0.941, '0.6': 0.956, '0.8': 0.967, '1.0': 0.971},
    'Pill': {'0.0': 0.875, '0.2': 0.935, '0.4': 0.958, '0.6': 0.971, '0.8': 0.978, '1.0': 0.978},
    'Screw': {'0.0': 0.948, '0.2': 0.986, '0.4': 0.996, '0.6': 0.999, '0.8': 1.0, '1.0': 1.0},
    'Toothbrush': {'0.0': 0.897, '0.2': 0.913, '0.4': 0.934, '0.6': 0.948, '0.8': 0.961, '1.0': 0.966},
    'Transistor': {'0.0': 0.883, '0.2': 0.935, '0.4': 0.972, '0.6': 0.993, '0.8': 0.999, '1.0': 0.997},
    'Zipper': {'0.0': 0.995, '0.2': 0.995, '0.4': 0.995, '0.6': 0.994, '0.8': 0.992, '1.0': 0.974},
    'Mean': {'0.0': 0.912, '0.2': 0.935, '0.4': 0.948, '0.6': 0.957, '0.8': 0.961, '1.0': 0.954},
}
"""Table 4 (PRO for lambda_s = 0.0 ... 1.0): row = category, column = lambda_s as printed."""

