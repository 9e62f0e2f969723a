from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_ROLE_UNSPECIFIED: _ClassVar[DeviceRole]
    DEVICE_ROLE_PF: _ClassVar[DeviceRole]
    DEVICE_ROLE_VF: _ClassVar[DeviceRole]
DEVICE_ROLE_UNSPECIFIED: DeviceRole
DEVICE_ROLE_PF: DeviceRole
DEVICE_ROLE_VF: DeviceRole

class GetVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "api_version", "python", "kernel", "simulated", "node_name", "started_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    version: str
    api_version: str
    python: str
    kernel: str
    simulated: bool
    node_name: str
    started_at: float
    def __init__(self, version: _Optional[str] = ..., api_version: _Optional[str] = ..., python: _Optional[str] = ..., kernel: _Optional[str] = ..., simulated: _Optional[bool] = ..., node_name: _Optional[str] = ..., started_at: _Optional[float] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ComponentHealth(_message.Message):
    __slots__ = ("name", "ok", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("ok", "components")
    OK_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    components: _containers.RepeatedCompositeFieldContainer[ComponentHealth]
    def __init__(self, ok: _Optional[bool] = ..., components: _Optional[_Iterable[_Union[ComponentHealth, _Mapping]]] = ...) -> None: ...

class Netdev(_message.Message):
    __slots__ = ("name", "mac", "mtu", "operstate", "carrier", "link_type", "ifindex")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    OPERSTATE_FIELD_NUMBER: _ClassVar[int]
    CARRIER_FIELD_NUMBER: _ClassVar[int]
    LINK_TYPE_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    mac: str
    mtu: int
    operstate: str
    carrier: bool
    link_type: str
    ifindex: int
    def __init__(self, name: _Optional[str] = ..., mac: _Optional[str] = ..., mtu: _Optional[int] = ..., operstate: _Optional[str] = ..., carrier: _Optional[bool] = ..., link_type: _Optional[str] = ..., ifindex: _Optional[int] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("pci_address", "role", "vendor", "device", "driver", "numa_node", "iommu_group", "netdev", "pf_address", "pf_name", "vf_index", "total_vfs", "num_vfs", "healthy", "health_detail", "vfs")
    PCI_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    IOMMU_GROUP_FIELD_NUMBER: _ClassVar[int]
    NETDEV_FIELD_NUMBER: _ClassVar[int]
    PF_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PF_NAME_FIELD_NUMBER: _ClassVar[int]
    VF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VFS_FIELD_NUMBER: _ClassVar[int]
    NUM_VFS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_DETAIL_FIELD_NUMBER: _ClassVar[int]
    VFS_FIELD_NUMBER: _ClassVar[int]
    pci_address: str
    role: DeviceRole
    vendor: str
    device: str
    driver: str
    numa_node: int
    iommu_group: int
    netdev: Netdev
    pf_address: str
    pf_name: str
    vf_index: int
    total_vfs: int
    num_vfs: int
    healthy: bool
    health_detail: str
    vfs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pci_address: _Optional[str] = ..., role: _Optional[_Union[DeviceRole, str]] = ..., vendor: _Optional[str] = ..., device: _Optional[str] = ..., driver: _Optional[str] = ..., numa_node: _Optional[int] = ..., iommu_group: _Optional[int] = ..., netdev: _Optional[_Union[Netdev, _Mapping]] = ..., pf_address: _Optional[str] = ..., pf_name: _Optional[str] = ..., vf_index: _Optional[int] = ..., total_vfs: _Optional[int] = ..., num_vfs: _Optional[int] = ..., healthy: _Optional[bool] = ..., health_detail: _Optional[str] = ..., vfs: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("role", "pf", "driver", "vendor", "device", "numa_node")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PF_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    role: DeviceRole
    pf: str
    driver: str
    vendor: str
    device: str
    numa_node: int
    def __init__(self, role: _Optional[_Union[DeviceRole, str]] = ..., pf: _Optional[str] = ..., driver: _Optional[str] = ..., vendor: _Optional[str] = ..., device: _Optional[str] = ..., numa_node: _Optional[int] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "generation")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    generation: int
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
