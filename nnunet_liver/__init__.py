"""nnunet_liver: liver lesion detection and classification on multi-phase CT, as an nnU-Net v2 extension.

The data flow, which module does which step and the label scheme: ARCHITECTURE.md at the repository root.
"""
import os

__version__ = "0.1.0"

#: the folder holding our trainer classes; nnU-Net finds them with
#: ``export nnUNet_extTrainer=$(python -c "import nnunet_liver; print(nnunet_liver.TRAINERS_DIR)")``
TRAINERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")
