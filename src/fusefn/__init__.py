"""fusefn: functional deep learning for medical images (a rewrite of FuseMedML).

Components are frozen records holding configuration, used through pure
functions over nested dicts (the batch_dict). See README.md for a tour.
"""

from fusefn import keys, nd, validators
from fusefn.core import Rng, chain, derive_seed, fingerprint, from_config, on_keys, record, to_config
from fusefn.errors import ConfigError, FusefnError, MissingKeyError, SampleError
from fusefn.protocols import Augmentation, GradientTransformation, ModelSpec, Reducer, Transform

__version__ = "0.1.0"

__all__ = [
    "nd",
    "keys",
    "validators",
    "Transform",
    "Reducer",
    "GradientTransformation",
    "Augmentation",
    "ModelSpec",
    "Rng",
    "chain",
    "derive_seed",
    "fingerprint",
    "from_config",
    "on_keys",
    "record",
    "to_config",
    "ConfigError",
    "FusefnError",
    "MissingKeyError",
    "SampleError",
    "__version__",
]
