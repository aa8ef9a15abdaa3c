"""Counting XLA compilations (jax.monitoring), for the tests that a program is reused."""

import jax


def count_compiles(fn):
  """Runs `fn()`; returns (number of backend compilations during the call, its result)."""
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = jax.block_until_ready(fn())
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(compiles), result
