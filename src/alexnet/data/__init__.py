"""Images in, batches out: image folders and the loader (:mod:`.loaders`); the paper's augmentation as tensor
ops on whole batches (:mod:`.transforms`); the bundled datasets (:mod:`.datasets`); ``alexnet prepare``
(:mod:`.plan`, :mod:`.prepare`) and the prepared format it writes (:mod:`.prepared`); ImageNet's classes,
devkit and error table (:mod:`.imagenet`, with ``imagenet_classes.txt``) and its archives read in place
(:mod:`.sources`).

Imports only the neutral helpers: the data know class names and image sizes, not networks.
"""

from .._moved import forward

__getattr__ = forward(__name__)  # this package took the name of a module: its names are in .loaders
