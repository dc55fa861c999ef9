"""A Flyte 2 task that launches a child run, as a parent task does: the real `flyte` SDK,
initialised in-cluster from the pod's environment alone (no API key, no config file), runs
the deployed task named by argv[1] and prints the child run's name. It runs inside the e2e
suite's Flyte 2 task image (tests/e2e/flyte2.py TASK), which has nothing of ours."""

import os
import sys

import flyte
import flyte.remote

flyte.init_in_cluster()
child = flyte.run(flyte.remote.Task.get(sys.argv[1], project=os.environ["FLYTE_PROJECT"],
                                        domain=os.environ["FLYTE_DOMAIN"], version="v1"))
print("child-run", child.name, "uid", os.getuid())
