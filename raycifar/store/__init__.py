"""One run's files on disk or in cloud storage (pyarrow's file systems): the run folder's names
and schema and their reading and writing (`runs`), what a re-run resumes from, checked on the
driver (`resume`), TensorBoard events (`tracking`), the range test's files (`range_test`) and a
seeds run's table (`seeds`). It imports the recipe only; no Ray.
"""
