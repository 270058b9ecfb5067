"""What reads finished runs: a run's model on test data (`evaluate`), image files classified
(`predict`), the plots and report.md (`report`), two runs compared on one test set
(`compare`) and the benchmark's tables (`bench_figures`). It imports the recipe and the store;
no Ray, so it works on a laptop with a run folder copied off the cluster.
"""
