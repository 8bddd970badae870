"""What jobs read and write (local disk or gs://).

  fileio          every file access, local or on object storage
  checkpoint      Orbax checkpoints of state, data iterator and config
  metrics_writer  TensorBoard events and metrics.jsonl (process 0)
  workdir_lock    one job per workdir
  sample_parts    samples on disk as resumable parts
"""
