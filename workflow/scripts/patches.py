"""Stage ``patches`` (see retina_sr.stages; ``--help`` lists its options)."""
from retina_sr.stages import main

if __name__ == "__main__":  # spawned worker processes (evaluate) import this file again
    raise SystemExit(main("patches"))
