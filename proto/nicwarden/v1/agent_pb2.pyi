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
    __slots__ = ("pci_address", "role", "vendor", "device", "driver", "numa_node", "iommu_group", "netdev", "pf_address", "pf_name", "vf_index", "total_vfs", "num_vfs", "healthy", "health_detail", "vfs", "frontend")
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
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
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
    frontend: str
    def __init__(self, pci_address: _Optional[str] = ..., role: _Optional[_Union[DeviceRole, str]] = ..., vendor: _Optional[str] = ..., device: _Optional[str] = ..., driver: _Optional[str] = ..., numa_node: _Optional[int] = ..., iommu_group: _Optional[int] = ..., netdev: _Optional[_Union[Netdev, _Mapping]] = ..., pf_address: _Optional[str] = ..., pf_name: _Optional[str] = ..., vf_index: _Optional[int] = ..., total_vfs: _Optional[int] = ..., num_vfs: _Optional[int] = ..., healthy: _Optional[bool] = ..., health_detail: _Optional[str] = ..., vfs: _Optional[_Iterable[str]] = ..., frontend: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("role", "pf", "driver", "vendor", "device", "numa_node", "page_size", "page_token")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PF_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    role: DeviceRole
    pf: str
    driver: str
    vendor: str
    device: str
    numa_node: int
    page_size: int
    page_token: str
    def __init__(self, role: _Optional[_Union[DeviceRole, str]] = ..., pf: _Optional[str] = ..., driver: _Optional[str] = ..., vendor: _Optional[str] = ..., device: _Optional[str] = ..., numa_node: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "generation", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    generation: int
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., generation: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PoolDevice(_message.Message):
    __slots__ = ("id", "health", "problem", "numa_node", "pf_address", "pf_name", "driver", "iommu_group")
    ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    PF_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PF_NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    IOMMU_GROUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    health: str
    problem: str
    numa_node: int
    pf_address: str
    pf_name: str
    driver: str
    iommu_group: int
    def __init__(self, id: _Optional[str] = ..., health: _Optional[str] = ..., problem: _Optional[str] = ..., numa_node: _Optional[int] = ..., pf_address: _Optional[str] = ..., pf_name: _Optional[str] = ..., driver: _Optional[str] = ..., iommu_group: _Optional[int] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("name", "resource", "socket", "device_count", "healthy_count", "registered", "last_error", "devices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_COUNT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource: str
    socket: str
    device_count: int
    healthy_count: int
    registered: bool
    last_error: str
    devices: _containers.RepeatedCompositeFieldContainer[PoolDevice]
    def __init__(self, name: _Optional[str] = ..., resource: _Optional[str] = ..., socket: _Optional[str] = ..., device_count: _Optional[int] = ..., healthy_count: _Optional[int] = ..., registered: _Optional[bool] = ..., last_error: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[PoolDevice, _Mapping]]] = ...) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools", "config_errors", "next_page_token")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_ERRORS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    config_errors: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ..., config_errors: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListAllocationsRequest(_message.Message):
    __slots__ = ("resource", "page_size", "page_token")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    resource: str
    page_size: int
    page_token: str
    def __init__(self, resource: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("resource", "device_id", "pod_namespace", "pod_name", "pod_uid", "allocated_at")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_AT_FIELD_NUMBER: _ClassVar[int]
    resource: str
    device_id: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    allocated_at: float
    def __init__(self, resource: _Optional[str] = ..., device_id: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_uid: _Optional[str] = ..., allocated_at: _Optional[float] = ...) -> None: ...

class ListAllocationsResponse(_message.Message):
    __slots__ = ("allocations", "next_page_token")
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    next_page_token: str
    def __init__(self, allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListClaimsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ClaimDevice(_message.Message):
    __slots__ = ("request", "pool", "device", "pci_address", "driver", "cdi_id", "attachment", "pod", "attachment_state")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PCI_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    CDI_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_STATE_FIELD_NUMBER: _ClassVar[int]
    request: str
    pool: str
    device: str
    pci_address: str
    driver: str
    cdi_id: str
    attachment: str
    pod: str
    attachment_state: str
    def __init__(self, request: _Optional[str] = ..., pool: _Optional[str] = ..., device: _Optional[str] = ..., pci_address: _Optional[str] = ..., driver: _Optional[str] = ..., cdi_id: _Optional[str] = ..., attachment: _Optional[str] = ..., pod: _Optional[str] = ..., attachment_state: _Optional[str] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("uid", "namespace", "name", "state", "cdi_ids", "devices", "prepared_at", "updated_at")
    UID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CDI_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    PREPARED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    uid: str
    namespace: str
    name: str
    state: str
    cdi_ids: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[ClaimDevice]
    prepared_at: float
    updated_at: float
    def __init__(self, uid: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., cdi_ids: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[ClaimDevice, _Mapping]]] = ..., prepared_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ListClaimsResponse(_message.Message):
    __slots__ = ("claims", "next_page_token", "driver")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    next_page_token: str
    driver: str
    def __init__(self, claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., driver: _Optional[str] = ...) -> None: ...

class ListAttachmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetAttachmentRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("container_id", "ifname", "network", "netns", "device", "kind", "state", "pod_namespace", "pod_name", "pod_uid", "result_json", "created")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    ifname: str
    network: str
    netns: str
    device: str
    kind: str
    state: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    result_json: str
    created: float
    def __init__(self, container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., network: _Optional[str] = ..., netns: _Optional[str] = ..., device: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., pod_uid: _Optional[str] = ..., result_json: _Optional[str] = ..., created: _Optional[float] = ...) -> None: ...

class ListAttachmentsResponse(_message.Message):
    __slots__ = ("attachments", "next_page_token")
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    attachments: _containers.RepeatedCompositeFieldContainer[Attachment]
    next_page_token: str
    def __init__(self, attachments: _Optional[_Iterable[_Union[Attachment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("adopt", "release")
    ADOPT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    adopt: str
    release: str
    def __init__(self, adopt: _Optional[str] = ..., release: _Optional[str] = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("actions", "unexplained")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    UNEXPLAINED_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedScalarFieldContainer[str]
    unexplained: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, actions: _Optional[_Iterable[str]] = ..., unexplained: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "problems_only", "kind", "namespace")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_ONLY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    problems_only: bool
    kind: str
    namespace: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., problems_only: _Optional[bool] = ..., kind: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class PolicedInterfaceStatus(_message.Message):
    __slots__ = ("key", "pod", "ifname", "network", "ingress_isolated", "egress_isolated", "ingress_entries", "egress_entries", "policies", "errors", "generation", "digest", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    INGRESS_ISOLATED_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ISOLATED_FIELD_NUMBER: _ClassVar[int]
    INGRESS_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    pod: str
    ifname: str
    network: str
    ingress_isolated: bool
    egress_isolated: bool
    ingress_entries: int
    egress_entries: int
    policies: _containers.RepeatedScalarFieldContainer[str]
    errors: _containers.RepeatedScalarFieldContainer[str]
    generation: int
    digest: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, key: _Optional[str] = ..., pod: _Optional[str] = ..., ifname: _Optional[str] = ..., network: _Optional[str] = ..., ingress_isolated: _Optional[bool] = ..., egress_isolated: _Optional[bool] = ..., ingress_entries: _Optional[int] = ..., egress_entries: _Optional[int] = ..., policies: _Optional[_Iterable[str]] = ..., errors: _Optional[_Iterable[str]] = ..., generation: _Optional[int] = ..., digest: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PolicyObjectStatus(_message.Message):
    __slots__ = ("kind", "key", "ok", "errors", "warnings")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    ok: bool
    errors: _containers.RepeatedScalarFieldContainer[str]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., ok: _Optional[bool] = ..., errors: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("interfaces", "objects", "datapath_ok", "datapath_error", "source_synced", "next_page_token", "objects_total", "objects_with_problems")
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_OK_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SYNCED_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_WITH_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    interfaces: _containers.RepeatedCompositeFieldContainer[PolicedInterfaceStatus]
    objects: _containers.RepeatedCompositeFieldContainer[PolicyObjectStatus]
    datapath_ok: bool
    datapath_error: str
    source_synced: bool
    next_page_token: str
    objects_total: int
    objects_with_problems: int
    def __init__(self, interfaces: _Optional[_Iterable[_Union[PolicedInterfaceStatus, _Mapping]]] = ..., objects: _Optional[_Iterable[_Union[PolicyObjectStatus, _Mapping]]] = ..., datapath_ok: _Optional[bool] = ..., datapath_error: _Optional[str] = ..., source_synced: _Optional[bool] = ..., next_page_token: _Optional[str] = ..., objects_total: _Optional[int] = ..., objects_with_problems: _Optional[int] = ...) -> None: ...

class SetNumVfsRequest(_message.Message):
    __slots__ = ("pf", "num_vfs")
    PF_FIELD_NUMBER: _ClassVar[int]
    NUM_VFS_FIELD_NUMBER: _ClassVar[int]
    pf: str
    num_vfs: int
    def __init__(self, pf: _Optional[str] = ..., num_vfs: _Optional[int] = ...) -> None: ...

class SetNumVfsResponse(_message.Message):
    __slots__ = ("pf", "pf_name", "previous", "num_vfs", "changed")
    PF_FIELD_NUMBER: _ClassVar[int]
    PF_NAME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    NUM_VFS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    pf: str
    pf_name: str
    previous: int
    num_vfs: int
    changed: bool
    def __init__(self, pf: _Optional[str] = ..., pf_name: _Optional[str] = ..., previous: _Optional[int] = ..., num_vfs: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class VfSettings(_message.Message):
    __slots__ = ("mac", "vlan", "qos", "vlan_proto", "spoofchk", "trust", "link_state", "min_tx_rate", "max_tx_rate")
    MAC_FIELD_NUMBER: _ClassVar[int]
    VLAN_FIELD_NUMBER: _ClassVar[int]
    QOS_FIELD_NUMBER: _ClassVar[int]
    VLAN_PROTO_FIELD_NUMBER: _ClassVar[int]
    SPOOFCHK_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    LINK_STATE_FIELD_NUMBER: _ClassVar[int]
    MIN_TX_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_TX_RATE_FIELD_NUMBER: _ClassVar[int]
    mac: str
    vlan: int
    qos: int
    vlan_proto: str
    spoofchk: bool
    trust: bool
    link_state: str
    min_tx_rate: int
    max_tx_rate: int
    def __init__(self, mac: _Optional[str] = ..., vlan: _Optional[int] = ..., qos: _Optional[int] = ..., vlan_proto: _Optional[str] = ..., spoofchk: _Optional[bool] = ..., trust: _Optional[bool] = ..., link_state: _Optional[str] = ..., min_tx_rate: _Optional[int] = ..., max_tx_rate: _Optional[int] = ...) -> None: ...

class SetVfRequest(_message.Message):
    __slots__ = ("vf", "settings")
    VF_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    vf: str
    settings: VfSettings
    def __init__(self, vf: _Optional[str] = ..., settings: _Optional[_Union[VfSettings, _Mapping]] = ...) -> None: ...

class SetVfResponse(_message.Message):
    __slots__ = ("vf", "before", "after")
    VF_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    vf: str
    before: VfSettings
    after: VfSettings
    def __init__(self, vf: _Optional[str] = ..., before: _Optional[_Union[VfSettings, _Mapping]] = ..., after: _Optional[_Union[VfSettings, _Mapping]] = ...) -> None: ...

class BindDriverRequest(_message.Message):
    __slots__ = ("vf", "driver", "force")
    VF_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    vf: str
    driver: str
    force: bool
    def __init__(self, vf: _Optional[str] = ..., driver: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class BindDriverResponse(_message.Message):
    __slots__ = ("vf", "previous", "driver", "changed", "overridden", "devices")
    VF_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    vf: str
    previous: str
    driver: str
    changed: bool
    overridden: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vf: _Optional[str] = ..., previous: _Optional[str] = ..., driver: _Optional[str] = ..., changed: _Optional[bool] = ..., overridden: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class ConvergeRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ConvergeResponse(_message.Message):
    __slots__ = ("applied", "skipped", "drift", "remaining", "converged")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    applied: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedScalarFieldContainer[str]
    drift: _containers.RepeatedScalarFieldContainer[str]
    remaining: _containers.RepeatedScalarFieldContainer[str]
    converged: bool
    def __init__(self, applied: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[str]] = ..., drift: _Optional[_Iterable[str]] = ..., remaining: _Optional[_Iterable[str]] = ..., converged: _Optional[bool] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("pod_namespace", "pod_name", "network", "verdict", "since_seconds")
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pod_namespace: str
    pod_name: str
    network: str
    verdict: str
    since_seconds: float
    def __init__(self, pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., network: _Optional[str] = ..., verdict: _Optional[str] = ..., since_seconds: _Optional[float] = ...) -> None: ...

class FlowRecord(_message.Message):
    __slots__ = ("time", "namespace", "pod", "network", "ifname", "direction", "verdict", "reason", "protocol", "src", "src_port", "dst", "dst_port", "policies", "iface", "lost")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    IFACE_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    time: float
    namespace: str
    pod: str
    network: str
    ifname: str
    direction: str
    verdict: str
    reason: str
    protocol: int
    src: str
    src_port: int
    dst: str
    dst_port: int
    policies: _containers.RepeatedScalarFieldContainer[str]
    iface: int
    lost: int
    def __init__(self, time: _Optional[float] = ..., namespace: _Optional[str] = ..., pod: _Optional[str] = ..., network: _Optional[str] = ..., ifname: _Optional[str] = ..., direction: _Optional[str] = ..., verdict: _Optional[str] = ..., reason: _Optional[str] = ..., protocol: _Optional[int] = ..., src: _Optional[str] = ..., src_port: _Optional[int] = ..., dst: _Optional[str] = ..., dst_port: _Optional[int] = ..., policies: _Optional[_Iterable[str]] = ..., iface: _Optional[int] = ..., lost: _Optional[int] = ...) -> None: ...
