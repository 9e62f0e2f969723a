"""Kubelet device plugin (v1beta1) for SR-IOV VF pools.

- ``config``: sriov-network-device-plugin compatible ``resourceList`` parsing;
- ``pools`` / ``health`` / ``state``: VFs per pool and their health, per snapshot;
- ``allocate`` / ``preferred``: the Allocate and GetPreferredAllocation logic;
- ``naming`` / ``devinfo``: env vars, ``_INFO`` JSON, device-info files;
- ``server`` / ``registration`` / ``rpc``: one gRPC server per pool, kubelet registration;
- ``manager``: :class:`~nicwarden.deviceplugin.manager.DevicePluginManager`, the entry point;
- ``sources``: the ``InventorySource`` and ``AllocationRecorder`` protocols it consumes.
"""
