"""The nuScenes vocabulary, devkit-free (base layer): one home for each of its facts.

* :data:`TABLES` - the 13 JSON tables of a version folder;
* :data:`CAMERA_CHANNELS` / :data:`LIDAR_CHANNEL` - the sensor channels in the devkit's order
  (the camera order of image *tensors* is :data:`labeldistill.structures.CAMERAS`);
* :data:`INFO_SPLITS` - the splits ``prepare`` writes an info file for, per version;
  :data:`DEVKIT_SPLITS` - every split the devkit's ``create_splits_scenes`` / ``load_gt``
  accepts, per version (a superset: also ``train_detect`` / ``train_track``);
* :data:`MINI_SCENES` and :data:`LOCATIONS` - the official v1.0-mini scenes and the four
  recording locations;
* :data:`CATEGORIES`, :data:`ATTRIBUTES`, :data:`VISIBILITY` - the category, attribute and
  visibility tables (names and tokens as in the devkit; descriptions our own, short);
* :data:`CATEGORY_TO_CLASS` - category -> detection class (the devkit's
  ``category_to_detection_name``; a test checks that they agree), and
  :data:`CLASS_CATEGORY` - one representative category per class;
* the attribute rule (METHOD.md 10): :data:`MOVING_SPEED`, :data:`ATTRIBUTE_MOVING`,
  :data:`ATTRIBUTE_STATIC` and :func:`attribute_for`.
"""

from __future__ import annotations

#: The 13 JSON tables every version folder holds (the devkit refuses to load without them).
TABLES: tuple[str, ...] = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)

#: The six cameras in the devkit's channel order (sensor table, info files, depth GT).
CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
LIDAR_CHANNEL = "LIDAR_TOP"

#: The official splits of each version that ``prepare`` writes an info file for.
INFO_SPLITS: dict[str, tuple[str, ...]] = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test",),
}
#: Every split of each version that the devkit's ``create_splits_scenes`` knows and its
#: ``load_gt`` accepts (what ``eval --split`` may name).
DEVKIT_SPLITS: dict[str, tuple[str, ...]] = {
    "v1.0-trainval": ("train", "val", "train_detect", "train_track"),
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-test": ("test",),
}

#: The four recording locations (log table).
LOCATIONS: tuple[str, ...] = (
    "boston-seaport",
    "singapore-onenorth",
    "singapore-queenstown",
    "singapore-hollandvillage",
)
#: The official v1.0-mini scenes (nuscenes.utils.splits) with the location they were recorded in.
MINI_SCENES: tuple[tuple[str, str], ...] = (
    ("scene-0061", "singapore-onenorth"),
    ("scene-0103", "boston-seaport"),
    ("scene-0553", "boston-seaport"),
    ("scene-0655", "boston-seaport"),
    ("scene-0757", "boston-seaport"),
    ("scene-0796", "singapore-queenstown"),
    ("scene-0916", "singapore-queenstown"),
    ("scene-1077", "singapore-hollandvillage"),
    ("scene-1094", "singapore-hollandvillage"),
    ("scene-1100", "singapore-hollandvillage"),
)

#: The category table: (name as in the devkit, description of our own, short).
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    (
        "human.pedestrian.personal_mobility",
        "A small electric or self-propelled vehicle with a rider.",
    ),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed to redirect traffic."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cones."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure bicycles."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)
#: The attribute table: (name as in the devkit, description).
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary and has no driver/rider in/on it."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)
#: The attribute names a result record may carry (the devkit's ``ATTRIBUTE_NAMES``).
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(name for name, _ in ATTRIBUTES)
#: The visibility table: (token, level, description).
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

#: nuScenes category -> detection class (METHOD.md 3.3; the devkit's
#: ``category_to_detection_name``); categories not listed are not detected.
CATEGORY_TO_CLASS: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}
#: A representative category of each detection class (written where only the class is known,
#: e.g. a box of an mmdetection3d info file; any category of the class gives the same GT).
CLASS_CATEGORY: dict[str, str] = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}

#: Speed (m/s) above which an object counts as moving (METHOD.md 10).
MOVING_SPEED = 0.2
#: Attribute of a moving object of each detection class (METHOD.md 10; "" = none).
ATTRIBUTE_MOVING: dict[str, str] = {
    "car": "vehicle.moving",
    "truck": "vehicle.moving",
    "construction_vehicle": "vehicle.moving",
    "bus": "vehicle.moving",
    "trailer": "vehicle.moving",
    "barrier": "",
    "motorcycle": "cycle.with_rider",
    "bicycle": "cycle.with_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}
#: Attribute of a standing object of each detection class (METHOD.md 10; "" = none).
ATTRIBUTE_STATIC: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.stopped",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.standing",
    "traffic_cone": "",
}


def attribute_for(name: str, speed: float) -> str:
    """Attribute of an object of detection class ``name`` moving at ``speed`` m/s (the rule of
    the published result formatter, METHOD.md 10): moving above :data:`MOVING_SPEED`."""
    table = ATTRIBUTE_MOVING if speed > MOVING_SPEED else ATTRIBUTE_STATIC
    return table[name]
