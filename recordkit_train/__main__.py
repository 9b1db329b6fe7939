"""``python -m recordkit_train`` and ``torchrun -m recordkit_train``: the training CLI."""

from recordkit_train.cli import main

if __name__ == "__main__":
    main(prog_name="recordkit-train")
