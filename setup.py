import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
#: the one version source is nnunet_liver.__version__ (read here without importing the package)
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "nnunet_liver" / "__init__.py").read_text(encoding="utf-8"),
                    re.M).group(1)

setup(
    name="nnunet_liver",
    version=VERSION,
    description="Liver lesion detection and classification on multi-phase CT as an nnU-Net v2 extension",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # the top-level dataset_conversion/ folder (nnU-Net style conversion scripts) installs as
    # nnunet_liver.dataset_conversion, so the console commands work after a plain `pip install .`
    packages=find_packages(include=["nnunet_liver", "nnunet_liver.*"]) + ["nnunet_liver.dataset_conversion"],
    package_dir={"nnunet_liver.dataset_conversion": "dataset_conversion"},
    include_package_data=True,
    package_data={"nnunet_liver": ["demo_models/**/*", "inference/*.json", "characterize/*.yaml"]},
    # what the package imports (tests/test_packaging.py checks it), plus dynamic-network-architectures, whose
    # PlainConvUNet the bundled demo models' plans name and nnU-Net builds by that name
    install_requires=[
        "nnunetv2>=2.6,<2.9",
        "torch>=2.1",
        "dynamic-network-architectures>=0.3",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.2",
        "acvl-utils>=0.2",
        "SimpleITK>=2.2",
        "scikit-image>=0.21",
        "connected-components-3d>=3.12",
        "numpy>=1.24",
        "scipy>=1.10",
        "nibabel>=4",
        "threadpoolctl>=3",
        "tqdm",
        "matplotlib>=3.6",
        # DICOM in (pydicom + its decoders for compressed transfer syntaxes) and DICOM SEG/SR out (highdicom)
        "pydicom>=3.0",
        "highdicom>=0.23",
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.0",
        # the DICOM node (nnunet-liver-node: C-STORE SCP / SCU) and the DICOMweb client (QIDO/WADO/STOW-RS)
        "pynetdicom>=2.1",
        "dicomweb-client>=0.59",
        "requests>=2.28",
        # the second-stage characterization (nnunet_liver/characterize): tables and logistic regressions
        "pandas>=2",
        "scikit-learn>=1.2",
    ],
    # dcmqi: the QIICR tools (segimage2itkimage, tid1500reader) read our DICOM SEG and SR back independently
    # radiomics for the characterization: pyradiomics as the maintained build that installs on Python 3.11 with
    # numpy 2 (built from source, about 20 s); the test extra has it so that CI tests the radiomics models
    extras_require={"characterize": ["pyradiomics-bhklab>=3.1.4"],
                    "test": ["pytest>=7", "jsonschema>=4", "blosc2", "dcmqi>=1.5", "pyradiomics-bhklab>=3.1.4"]},
    entry_points={
        "console_scripts": [
            "nnunet-liver-phantom=nnunet_liver.phantom.cli:main",
            "nnunet-liver-convert=nnunet_liver.dataset_conversion.cli:main",
            "nnunet-liver-evaluate=nnunet_liver.evaluation.cli:main",
            "nnunet-liver-detect=nnunet_liver.inference.cli:main",
            "nnunet-liver-demo=nnunet_liver.demo:main",
            "nnunet-liver-plan=nnunet_liver.planning:main",
            "nnunet-liver-node=nnunet_liver.node.cli:main",
            "nnunet-liver-characterize=nnunet_liver.characterize.cli:main",
        ],
    },
)
