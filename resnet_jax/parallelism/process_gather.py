"""Host values of every process, gathered: what each process alone saw
(the files it skipped) becomes one record that process 0 writes."""

import json
from typing import Any

import jax
import numpy as np


def allgather_json(value: Any) -> list:
  """`value` (anything JSON holds) of every process, in process order.

  A collective: every process of the run must call it at the same point.

  Args:
    value: this process's value.

  Returns:
    The values of processes 0 .. process_count - 1.
  """
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
  # Two collectives: the lengths, then every text padded to the longest.
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).ravel()
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]
