"""The synthetic nuScenes-format dataset generator (``labeldistill synth``), a product of its own.

Imports only the base layer (errors, structures, geometry, config, nuscenes_schema, io) plus
numpy and PIL: objects -> world -> raycast -> camera / lidar -> tables -> generate.
"""
