"""Running as many processes over many devices.

  startup       multi-process start through jax.distributed
  sharding      the device mesh, state and batch shardings
  multihost     each process's rows of a global array, sums across processes
  stop_request  SIGTERM/SIGINT become one agreed stop step
"""
