"""``python -m workers.kubelet ...``: one simulated kubelet (see ``workers.kubelet``)."""

from workers.kubelet.cli import main

if __name__ == "__main__":
    main()
