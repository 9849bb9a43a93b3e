"""Lidar points in, sparse voxels out.

    points     read_points: .bin and .npy scans as float32 [N, 5]
    scene      the synthetic street scene (make_scene, SCENES), made by ray casting
    voxelize   BEVFusion's hard voxelizer and to_sparse_tensor for spconv
"""
