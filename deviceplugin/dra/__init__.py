"""Dynamic Resource Allocation front-end: VFs offered as ``resource.k8s.io/v1``
devices (ResourceSlices), prepared for ResourceClaims by a kubelet plugin.

The same inventory, CNI attach path and health as the device plugin; each VF
is offered by exactly one of the two front-ends.
"""
