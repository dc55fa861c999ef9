"""Every image the end-to-end suite runs, built (or found in the cache) before pytest
starts: `make e2e` runs `python -m tests.e2e.images`, so no test's timeout covers a build.

    python -m tests.e2e.images     build what is missing, saying what and why
"""

from __future__ import annotations

from pathlib import Path

from devstack.real import images
from devstack.real.images import PythonImage, python_image
from devstack.real.peers import say
from tests.e2e import flyte, flyte2

#: A task image with a Python 3 and nothing of ours, as a Flyte 2 image is to us.
PYTHON = PythonImage("flyte-auth.e2e/python:1", "/opt/python", (), (), (), ["python3"], [],
                     "1000:1000")
#: The task images the suite's tests import into the node, besides the node's own.
TASKS = (PYTHON, flyte.TASK, flyte2.TASK)


def build_all() -> list[Path]:
    """The node's images (pause, tool) and every task image, cached by content; the agent's
    and the servers' are the ones `make dist` built."""
    return [*images.tool_images(), images.release_image("agent"), images.release_image("server"),
            *map(python_image, TASKS)]


if __name__ == "__main__":
    for tarball in build_all():
        say(f"image: {tarball}")
