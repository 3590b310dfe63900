"""`python -m alvts`: the offline main job on the shipped demo model (see `alvts.cli.demo`)."""

from .cli.demo import main

if __name__ == "__main__":
    main()
