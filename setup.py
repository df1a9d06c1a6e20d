"""mlops-suite: Airflow-scheduled Beam/TFT/TFDV/MLMD training with TF Serving rollout."""

from setuptools import find_packages, setup

PACKAGES = ("core", "mlops", "beam_jobs", "transforms", "trainer", "serving", "metadata", "monitoring", "validation")

setup(
    name="mlops-suite",
    version="0.1.0",
    description="A production MLOps reference: Airflow, Beam, TF Transform, TFDV, TF Serving and ML Metadata",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=[f"{name}*" for name in PACKAGES]),
    package_data={"serving": ["*.config", "*.pbtxt"], "monitoring": ["*.toml"]},
    # Dependencies are pinned in requirements/*.lock and installed by `make`; nothing here
    # so that installing the package never re-resolves the TFX family.
    install_requires=[],
    entry_points={"console_scripts": ["mlops=mlops.cli:main"]},
)
