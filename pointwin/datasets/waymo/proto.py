"""Waymo Open Dataset protobuf messages, built at import time without protoc or TensorFlow.

The descriptors below restate the parts of the public ``dataset.proto``, ``label.proto`` and
``protos/metrics.proto`` (package ``waymo.open_dataset``, proto2) that pointwin reads or writes.
Field numbers and types are those of the public format, so the classes parse real ``Frame`` records and
read/write the official ``metrics.Objects`` ``.bin`` files. Fields left out (camera images, map
features, keypoints, ...) are kept as unknown fields by protobuf and survive a parse/serialise round trip.

The messages live in a private descriptor pool, so they never clash with an installed
``waymo_open_dataset`` package.

Classes: ``MatrixShape``, ``MatrixFloat``, ``MatrixInt32``, ``Transform``, ``Velocity``,
``CameraName``, ``LaserName``, ``CameraCalibration``, ``LaserCalibration``, ``Context``,
``RangeImage``, ``Laser``, ``Polygon2dProto``, ``Label``, ``Frame``, ``Object``,
``NoLabelZoneObject``, ``Objects``.

Needs the ``protobuf`` package (the ``waymo`` extra); importing this module without it raises an
ImportError that says so.
"""

from __future__ import annotations

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("pointwin.datasets.waymo.proto needs the 'protobuf' package: "
                      "pip install 'pointwin[waymo]'") from e

_PACKAGE = "waymo.open_dataset"
_F = descriptor_pb2.FieldDescriptorProto

_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}

# One row per field: (name, number, label, type, options). type is a scalar name, "msg:Full.Name" or
# "enum:Full.Name" (names relative to the package). options: "packed" or ("default", text).
_OPT, _REP = "optional", "repeated"

_MESSAGES: dict[str, dict] = {
    "MatrixShape": {"fields": [("dims", 1, _REP, "int32")]},
    "MatrixFloat": {"fields": [("data", 1, _REP, "float", "packed"), ("shape", 2, _OPT, "msg:MatrixShape")]},
    "MatrixInt32": {"fields": [("data", 1, _REP, "int32", "packed"), ("shape", 2, _OPT, "msg:MatrixShape")]},
    "CameraName": {"fields": [], "enums": {"Name": ["UNKNOWN", "FRONT", "FRONT_LEFT", "FRONT_RIGHT",
                                                    "SIDE_LEFT", "SIDE_RIGHT", "REAR_LEFT", "REAR",
                                                    "REAR_RIGHT"]}},
    "LaserName": {"fields": [], "enums": {"Name": ["UNKNOWN", "TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR"]}},
    # 4x4 row-major transform.
    "Transform": {"fields": [("transform", 1, _REP, "double")]},
    "Velocity": {"fields": [("v_x", 1, _OPT, "float"), ("v_y", 2, _OPT, "float"), ("v_z", 3, _OPT, "float"),
                            ("w_x", 4, _OPT, "double"), ("w_y", 5, _OPT, "double"), ("w_z", 6, _OPT, "double")]},
    "CameraCalibration": {"fields": [
        ("name", 1, _OPT, "enum:CameraName.Name"), ("intrinsic", 2, _REP, "double"),
        ("extrinsic", 3, _OPT, "msg:Transform"), ("width", 4, _OPT, "int32"), ("height", 5, _OPT, "int32"),
    ]},
    "LaserCalibration": {"fields": [
        ("name", 1, _OPT, "enum:LaserName.Name"), ("beam_inclinations", 2, _REP, "double"),
        ("beam_inclination_min", 3, _OPT, "double"), ("beam_inclination_max", 4, _OPT, "double"),
        ("extrinsic", 5, _OPT, "msg:Transform"),
    ]},
    "Context.Stats.ObjectCount": {"fields": [("type", 1, _OPT, "enum:Label.Type"), ("count", 2, _OPT, "int32")]},
    "Context.Stats": {"fields": [
        ("laser_object_counts", 1, _REP, "msg:Context.Stats.ObjectCount"), ("time_of_day", 2, _OPT, "string"),
        ("location", 3, _OPT, "string"), ("weather", 4, _OPT, "string"),
        ("camera_object_counts", 5, _REP, "msg:Context.Stats.ObjectCount"),
    ]},
    "Context": {"fields": [
        ("name", 1, _OPT, "string"), ("camera_calibrations", 2, _REP, "msg:CameraCalibration"),
        ("laser_calibrations", 3, _REP, "msg:LaserCalibration"), ("stats", 4, _OPT, "msg:Context.Stats"),
    ]},
    # Range image channels: range, intensity, elongation, is-in-no-label-zone; *_compressed are zlib'd
    # serialised MatrixFloat/MatrixInt32 messages.
    "RangeImage": {"fields": [
        ("range_image", 1, _OPT, "msg:MatrixFloat"), ("range_image_compressed", 2, _OPT, "bytes"),
        ("camera_projection_compressed", 3, _OPT, "bytes"), ("range_image_pose_compressed", 4, _OPT, "bytes"),
        ("range_image_flow_compressed", 5, _OPT, "bytes"), ("segmentation_label_compressed", 6, _OPT, "bytes"),
    ]},
    "Laser": {"fields": [("name", 1, _OPT, "enum:LaserName.Name"), ("ri_return1", 2, _OPT, "msg:RangeImage"),
                         ("ri_return2", 3, _OPT, "msg:RangeImage")]},
    "Polygon2dProto": {"fields": [("x", 1, _REP, "double"), ("y", 2, _REP, "double"), ("id", 3, _OPT, "string")]},
    "Label.Box": {"fields": [
        ("center_x", 1, _OPT, "double"), ("center_y", 2, _OPT, "double"), ("center_z", 3, _OPT, "double"),
        ("width", 4, _OPT, "double"), ("length", 5, _OPT, "double"), ("height", 6, _OPT, "double"),
        ("heading", 7, _OPT, "double"),
    ], "enums": {"Type": ["TYPE_UNKNOWN", "TYPE_3D", "TYPE_2D", "TYPE_AA_2D"]}},
    "Label.Metadata": {"fields": [
        ("speed_x", 1, _OPT, "double"), ("speed_y", 2, _OPT, "double"), ("accel_x", 3, _OPT, "double"),
        ("accel_y", 4, _OPT, "double"), ("speed_z", 5, _OPT, "double"), ("accel_z", 6, _OPT, "double"),
    ]},
    "Label.Association": {"fields": [("laser_object_id", 1, _OPT, "string")]},
    "Label": {"fields": [
        ("box", 1, _OPT, "msg:Label.Box"), ("metadata", 2, _OPT, "msg:Label.Metadata"),
        ("type", 3, _OPT, "enum:Label.Type"), ("id", 4, _OPT, "string"),
        ("detection_difficulty_level", 5, _OPT, "enum:Label.DifficultyLevel"),
        ("tracking_difficulty_level", 6, _OPT, "enum:Label.DifficultyLevel"),
        ("num_lidar_points_in_box", 7, _OPT, "int32"),
        ("association", 10, _OPT, "msg:Label.Association"),
        ("most_visible_camera_name", 11, _OPT, "string"), ("camera_synced_box", 12, _OPT, "msg:Label.Box"),
        ("num_top_lidar_points_in_box", 13, _OPT, "int32"),
    ], "enums": {"Type": ["TYPE_UNKNOWN", "TYPE_VEHICLE", "TYPE_PEDESTRIAN", "TYPE_SIGN", "TYPE_CYCLIST"],
                 "DifficultyLevel": ["UNKNOWN", "LEVEL_1", "LEVEL_2"]}},
    "Frame": {"fields": [
        ("context", 1, _OPT, "msg:Context"), ("timestamp_micros", 2, _OPT, "int64"),
        ("pose", 3, _OPT, "msg:Transform"), ("lasers", 5, _REP, "msg:Laser"),
        ("laser_labels", 6, _REP, "msg:Label"), ("no_label_zones", 7, _REP, "msg:Polygon2dProto"),
    ]},
    # metrics.proto
    "Object": {"fields": [
        ("object", 1, _OPT, "msg:Label"), ("score", 2, _OPT, "float", ("default", "1")),
        ("overlap_with_nlz", 3, _OPT, "bool"), ("context_name", 4, _OPT, "string"),
        ("frame_timestamp_micros", 5, _OPT, "int64"), ("camera_name", 6, _OPT, "enum:CameraName.Name"),
    ]},
    "NoLabelZoneObject": {"fields": [
        ("zone", 1, _OPT, "msg:Polygon2dProto"), ("context_name", 2, _OPT, "string"),
        ("frame_timestamp_micros", 3, _OPT, "int64"),
    ]},
    "Objects": {"fields": [("objects", 1, _REP, "msg:Object"),
                           ("no_label_zone_objects", 2, _REP, "msg:NoLabelZoneObject")]},
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="pointwin/waymo_open_dataset_subset.proto",
                                             package=_PACKAGE, syntax="proto2")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    # Parents before children: sort by nesting depth.
    for full in sorted(_MESSAGES, key=lambda n: n.count(".")):
        parent, _, short = full.rpartition(".")
        msg = protos[parent].nested_type.add(name=short) if parent else fdp.message_type.add(name=short)
        protos[full] = msg
        spec = _MESSAGES[full]
        for enum_name, values in spec.get("enums", {}).items():
            enum = msg.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        if full == "Frame":  # extensions 1000 to max, as in the public proto
            msg.extension_range.add(start=1000, end=536870912)
        for name, number, label, kind, *opts in spec["fields"]:
            field = msg.field.add(name=name, number=number,
                                  label=_F.LABEL_REPEATED if label == _REP else _F.LABEL_OPTIONAL)
            if kind.startswith("msg:"):
                field.type, field.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{kind[4:]}"
            elif kind.startswith("enum:"):
                field.type, field.type_name = _F.TYPE_ENUM, f".{_PACKAGE}.{kind[5:]}"
            else:
                field.type = _SCALARS[kind]
            for opt in opts:
                if opt == "packed":
                    field.options.packed = True
                else:
                    field.default_value = opt[1]
    return fdp


def _build() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    classes = {}
    for full in _MESSAGES:
        if "." in full:
            continue  # nested classes are reachable as attributes of their parent (Label.Box, ...)
        desc = pool.FindMessageTypeByName(f"{_PACKAGE}.{full}")
        if hasattr(message_factory, "GetMessageClass"):
            classes[full] = message_factory.GetMessageClass(desc)
        else:  # protobuf < 4.22
            classes[full] = message_factory.MessageFactory(pool).GetPrototype(desc)
    return classes


_CLASSES = _build()
MatrixShape = _CLASSES["MatrixShape"]
MatrixFloat = _CLASSES["MatrixFloat"]
MatrixInt32 = _CLASSES["MatrixInt32"]
CameraName = _CLASSES["CameraName"]
LaserName = _CLASSES["LaserName"]
Transform = _CLASSES["Transform"]
Velocity = _CLASSES["Velocity"]
CameraCalibration = _CLASSES["CameraCalibration"]
LaserCalibration = _CLASSES["LaserCalibration"]
Context = _CLASSES["Context"]
RangeImage = _CLASSES["RangeImage"]
Laser = _CLASSES["Laser"]
Polygon2dProto = _CLASSES["Polygon2dProto"]
Label = _CLASSES["Label"]
Frame = _CLASSES["Frame"]
Object = _CLASSES["Object"]
NoLabelZoneObject = _CLASSES["NoLabelZoneObject"]
Objects = _CLASSES["Objects"]

__all__ = ["CameraCalibration", "CameraName", "Context", "Frame", "Label", "Laser", "LaserCalibration", "LaserName",
           "MatrixFloat", "MatrixInt32", "MatrixShape", "NoLabelZoneObject", "Object", "Objects", "Polygon2dProto",
           "RangeImage", "Transform", "Velocity"]
