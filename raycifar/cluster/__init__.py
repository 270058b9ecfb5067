"""Everything that runs on Ray, and the only layer that imports it: joining or starting a
cluster (`connect`), the placement, storage and GPU-sharing checks (`placement`), Ray Train's
fit on the driver (`trainer`) and the per-worker loop (`worker`), the Tune runs: range test, LRMAX search and seeds
(`trials`), choosing a run's LRs (`lrs`), the benchmark's Ray variants (`bench`), and every
private Ray surface touched, pinned by tests (`ray_compat`).
"""
