"""BLE link of the helmet on a Raspberry Pi (CPython): BlueZ over D-Bus, with dbus-next.

Same interface as link_ble.BleLink and link_serial.SerialLink (``poll``, ``readinto``,
``write``, ``connected``, ``closed``, ``close``) and the same Nordic UART Service, so a
central cannot tell a Pi helmet from a board helmet::

    service  6E400001-B5A3-F393-E0A9-E50E24DCCA9E  Nordic UART Service (primary)
    RX       6E400002-...  write, write-without-response   central -> helmet
    TX       6E400003-...  notify                          helmet -> central

BlueZ does the radio; this module registers with it over the system bus:

* a GATT application (org.bluez.GattManager1.RegisterApplication): an ObjectManager at
  ``path + "/gatt"`` whose children are the service (org.bluez.GattService1) and its two
  characteristics (org.bluez.GattCharacteristic1);
* an advertisement (org.bluez.LEAdvertisingManager1.RegisterAdvertisement) at
  ``path + "/adv0"``: Type "peripheral", ServiceUUIDs [NUS], LocalName ``name``,
  Discoverable;
* the adapter is powered on first when it is off (Adapter1.Powered).

The serve loop is synchronous, dbus-next is asyncio: the D-Bus connection lives in an
asyncio loop on a daemon thread. The loop thread puts what a central writes (WriteValue on
RX) into a receive buffer of ``rx_size`` bytes under a lock; ``poll``/``readinto`` take it
out. ``write`` hands the bytes to the loop thread, which emits them as PropertiesChanged(Value)
signals on TX - BlueZ turns each into one notification - in pieces of MTU - 3 bytes (20 until
a WriteValue tells the MTU the central negotiated). As in link_ble: a full receive buffer
drops the excess (``rx_dropped``) and stores a newline as soon as there is room again; with no
subscribed central ``write`` drops the bytes (``tx_dropped``); when the central unsubscribes
(StopNotify, which BlueZ also calls on disconnect) a newline ends any half-received line.

``connected`` is "a central is subscribed to TX" (StartNotify .. StopNotify): the moment the
helmet's replies can reach someone.

CPython only: dbus-next is imported when a BluezLink is made (ImportError with the pip
command when it is missing); on MicroPython this module imports and does nothing.
"""

NUS_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"

BLUEZ = "org.bluez"
_GATT_MANAGER = "org.bluez.GattManager1"
_ADV_MANAGER = "org.bluez.LEAdvertisingManager1"
_ADAPTER = "org.bluez.Adapter1"
_PROPERTIES = "org.freedesktop.DBus.Properties"
_MTU_MIN = 23  # ATT default MTU; a notification carries MTU - 3 bytes
_ATT_HEADER = 3

_classes = None  # the D-Bus interface classes, made on first use (they need dbus-next)


def _interfaces():
    """Define the exported D-Bus interfaces (once): they subclass dbus-next's ServiceInterface."""
    global _classes
    if _classes is not None:
        return _classes
    from dbus_next import DBusError
    from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

    class GattService(ServiceInterface):
        def __init__(self, uuid):
            super().__init__("org.bluez.GattService1")
            self._uuid = uuid

        @dbus_property(access=PropertyAccess.READ, name="UUID")
        def uuid(self) -> "s":
            return self._uuid

        @dbus_property(access=PropertyAccess.READ, name="Primary")
        def primary(self) -> "b":
            return True

    class GattCharacteristic(ServiceInterface):
        """One characteristic; the link gets the calls through ``on_write`` / ``on_notify``."""

        def __init__(self, uuid, service_path, flags, on_write=None, on_notify=None):
            super().__init__("org.bluez.GattCharacteristic1")
            self._uuid = uuid
            self._service = service_path
            self._flags = list(flags)
            self._on_write = on_write
            self._on_notify = on_notify
            self._value = b""
            self.notifying = False

        @dbus_property(access=PropertyAccess.READ, name="UUID")
        def uuid(self) -> "s":
            return self._uuid

        @dbus_property(access=PropertyAccess.READ, name="Service")
        def service(self) -> "o":
            return self._service

        @dbus_property(access=PropertyAccess.READ, name="Flags")
        def flags(self) -> "as":
            return self._flags

        @dbus_property(access=PropertyAccess.READ, name="Value")
        def value(self) -> "ay":
            return self._value

        @dbus_property(access=PropertyAccess.READ, name="Notifying")
        def notifying_prop(self) -> "b":
            return self.notifying

        @method(name="ReadValue")
        def read_value(self, options: "a{sv}") -> "ay":
            if "read" not in self._flags:
                raise DBusError("org.bluez.Error.NotPermitted", "Read not permitted")
            return self._value

        @method(name="WriteValue")
        def write_value(self, value: "ay", options: "a{sv}"):
            if self._on_write is None:
                raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")
            self._on_write(value, options)

        @method(name="StartNotify")
        def start_notify(self):
            if self._on_notify is None:
                raise DBusError("org.bluez.Error.NotSupported", "Notify not supported")
            if not self.notifying:
                self.notifying = True
                self.emit_properties_changed({"Notifying": True})
                self._on_notify(True)

        @method(name="StopNotify")
        def stop_notify(self):
            if self.notifying:
                self.notifying = False
                self.emit_properties_changed({"Notifying": False})
                self._on_notify(False)

        def notify(self, data):
            """Send ``data`` (at most MTU - 3 bytes) as one notification."""
            self._value = data
            self.emit_properties_changed({"Value": data})

    class Advertisement(ServiceInterface):
        def __init__(self, name, uuids, on_release):
            super().__init__("org.bluez.LEAdvertisement1")
            self._name = name
            self._uuids = list(uuids)
            self._on_release = on_release

        @dbus_property(access=PropertyAccess.READ, name="Type")
        def type_(self) -> "s":
            return "peripheral"

        @dbus_property(access=PropertyAccess.READ, name="ServiceUUIDs")
        def service_uuids(self) -> "as":
            return self._uuids

        @dbus_property(access=PropertyAccess.READ, name="LocalName")
        def local_name(self) -> "s":
            return self._name

        @dbus_property(access=PropertyAccess.READ, name="Discoverable")
        def discoverable(self) -> "b":
            return True

        @method(name="Release")
        def release(self):
            self._on_release()

    _classes = (GattService, GattCharacteristic, Advertisement)
    return _classes


class BluezLink:
    """Nordic UART Service peripheral through BlueZ, with the serial link's interface.

    Parameters: ``name`` advertised (LocalName); ``adapter`` the BlueZ adapter (``hci0``);
    ``bus_address`` a D-Bus address (None: the system bus, where bluetoothd is);
    ``rx_size`` the receive buffer; ``write_timeout_ms`` how long ``write`` waits for the D-Bus
    thread; ``start_timeout_s`` how long registration may take; ``path`` the D-Bus object
    path under which the application and advertisement are exported; ``power_on`` switch the
    adapter on when it is off.

    Raises ImportError (no dbus-next) or OSError (no bus, no bluetoothd, no adapter, BlueZ
    refused the registration), the errors after which app falls back to the serial link.
    """

    def __init__(self, name="painhelm", adapter="hci0", bus_address=None, rx_size=4096,
                 write_timeout_ms=2000, start_timeout_s=10.0, path="/org/painhelm", power_on=True):
        if rx_size < 2:
            raise ValueError("rx_size must be at least 2, got %d" % rx_size)
        try:
            import asyncio
            import threading

            import dbus_next  # noqa: F401
        except ImportError as e:
            raise ImportError("link_bluez needs CPython and dbus-next "
                              "(pip install dbus-next==0.2.3): %s" % e)
        self.name = name
        self.adapter = adapter
        self.address = None  # the adapter's Bluetooth address, once registered
        self.connected = False  # a central is subscribed to TX notifications
        self.closed = False  # close() was called: a serve loop ends
        self.advertising = False
        self.mtu = _MTU_MIN
        self.device = None  # D-Bus path of the central that wrote last (BlueZ's "device" option)
        self.connections = 0  # subscriptions so far
        self.rx_dropped = 0  # bytes lost because the receive buffer was full
        self.tx_dropped = 0  # bytes not sent (no central, or the D-Bus thread did not take them)
        self._chunk = _MTU_MIN - _ATT_HEADER
        self._size = rx_size
        self._rx = bytearray()
        self._cut = False  # bytes were lost: a newline goes in first when room returns
        self._lock = threading.Lock()
        self._bus_address = bus_address
        self._adapter_path = "/org/bluez/" + adapter
        self._app_path = path + "/gatt"
        self._service_path = self._app_path + "/service0"
        self._adv_path = path + "/adv0"
        self._power_on = power_on
        self._write_timeout_s = write_timeout_ms / 1000
        self._start_timeout_s = start_timeout_s
        self._bus = None
        self._tx = None
        self._app_registered = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="painhelm-bluez", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(), start_timeout_s)
        except BaseException:
            self._shutdown(2.0)
            raise

    # ------------------------------------------------------------------ D-Bus thread
    def _run(self):
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro, timeout):
        """Run ``coro`` on the D-Bus thread and wait for its result; errors become OSError."""
        import asyncio

        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except (OSError, ValueError):  # TimeoutError is an OSError
            fut.cancel()
            raise
        except Exception as e:
            raise OSError("BlueZ: %s: %s" % (type(e).__name__, e))

    async def _bluez(self, interface, member, signature="", body=(), path=None):
        """Call a BlueZ method; a D-Bus error reply becomes OSError."""
        from dbus_next import Message, MessageType

        reply = await self._bus.call(Message(destination=BLUEZ, path=path or self._adapter_path,
                                             interface=interface, member=member,
                                             signature=signature, body=list(body)))
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise OSError("BlueZ %s.%s on %s: %s %s" % (interface, member, path or self._adapter_path,
                                                       reply.error_name, text))
        return reply.body

    async def _bus_call(self, member, signature, body):
        from dbus_next import Message, MessageType

        reply = await self._bus.call(Message(destination="org.freedesktop.DBus",
                                             path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member=member,
                                             signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            raise OSError("D-Bus %s: %s %s" % (member, reply.error_name, reply.body))
        return reply.body

    async def _start(self):
        from dbus_next import BusType, Variant
        from dbus_next.aio import MessageBus

        if self._bus_address is None:
            bus = MessageBus(bus_type=BusType.SYSTEM)
        else:
            bus = MessageBus(bus_address=self._bus_address)
        self._bus = await bus.connect()
        bus.add_message_handler(self._on_bus_message)
        await self._bus_call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                              "member='NameOwnerChanged',arg0='%s'" % BLUEZ])
        props = (await self._bluez(_PROPERTIES, "GetAll", "s", [_ADAPTER]))[0]
        if "Address" in props:
            self.address = props["Address"].value
        if self._power_on and "Powered" in props and not props["Powered"].value:
            await self._bluez(_PROPERTIES, "Set", "ssv", [_ADAPTER, "Powered", Variant("b", True)])

        GattService, GattCharacteristic, Advertisement = _interfaces()
        service = GattService(NUS_SERVICE)
        rx = GattCharacteristic(NUS_RX, self._service_path, ("write", "write-without-response"),
                                on_write=self._on_write)
        self._tx = tx = GattCharacteristic(NUS_TX, self._service_path, ("notify",),
                                           on_notify=self._on_notify)
        adv = Advertisement(self.name, (NUS_SERVICE,), self._on_release)
        bus.export(self._service_path, service)
        bus.export(self._service_path + "/char0", rx)
        bus.export(self._service_path + "/char1", tx)
        bus.export(self._adv_path, adv)
        # BlueZ calls back GetManagedObjects on the application path before it answers
        await self._bluez(_GATT_MANAGER, "RegisterApplication", "oa{sv}", [self._app_path, {}])
        self._app_registered = True
        await self._bluez(_ADV_MANAGER, "RegisterAdvertisement", "oa{sv}", [self._adv_path, {}])
        self.advertising = True

    def _on_bus_message(self, msg):
        # bluetoothd went away (restart, crash): its registrations are gone with it
        if (msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == BLUEZ
                and not msg.body[2]):
            self.advertising = False
            self._app_registered = False
            if self.connected:
                self._on_notify(False)
        return False

    def _on_write(self, value, options):
        mtu = options.get("mtu")
        if mtu is not None and mtu.value >= _MTU_MIN:
            self.mtu = mtu.value
            self._chunk = mtu.value - _ATT_HEADER
        device = options.get("device")
        if device is not None:
            self.device = device.value
        with self._lock:
            self._put(value)

    def _on_notify(self, on):
        if on:
            self.connections += 1
            self.connected = True
        else:
            self.connected = False
            self.mtu = _MTU_MIN
            self._chunk = _MTU_MIN - _ATT_HEADER
            with self._lock:
                self._cut = True  # end a half-received line before the next central's data
                self._put(b"")

    def _on_release(self):
        self.advertising = False

    def _put(self, data):
        """Append ``data`` to the receive buffer (lock held); drop and count what does not fit."""
        rx = self._rx
        free = self._size - len(rx)
        if self._cut:
            if not free:
                self.rx_dropped += len(data)
                return
            rx.append(0x0A)
            free -= 1
            self._cut = False
        n = len(data)
        if n > free:
            self.rx_dropped += n - free
            data = data[:free]
            self._cut = True
        rx += data

    async def _notify(self, data):
        i = 0
        n = len(data)
        tx = self._tx
        while i < n and self.connected:
            k = self._chunk
            tx.notify(data[i : i + k])
            i += k
        return n if i > n else i

    async def _stop(self):
        bus = self._bus
        if bus is None:
            return
        import asyncio

        for done, interface, member, path in ((self.advertising, _ADV_MANAGER, "UnregisterAdvertisement", self._adv_path),
                                             (self._app_registered, _GATT_MANAGER, "UnregisterApplication", self._app_path)):
            if done:
                try:
                    await asyncio.wait_for(self._bluez(interface, member, "o", [path]), 2.0)
                except Exception:  # bluetoothd gone, or it dropped us already: nothing to undo
                    pass
        self.advertising = False
        self._app_registered = False
        bus.disconnect()
        try:
            await asyncio.wait_for(bus.wait_for_disconnect(), 2.0)
        except Exception:
            pass
        sock = getattr(bus, "_sock", None)  # dbus-next 0.2.3 shuts the socket down, never closes it
        if sock is not None:
            sock.close()

    def _shutdown(self, timeout):
        try:
            if self._bus is not None:
                self._call(self._stop(), timeout)
        except Exception:
            pass
        self._bus = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ application side
    def any(self):
        """Bytes waiting in the receive buffer."""
        return len(self._rx)

    def readinto(self, buf):
        """Copy the bytes received since the last call into ``buf``; return how many (0: none)."""
        with self._lock:
            n = min(len(self._rx), len(buf))
            if n:
                buf[:n] = self._rx[:n]
                del self._rx[:n]
        return n

    def poll(self):
        """NON-BLOCKING: the bytes received since the last call, or None."""
        with self._lock:
            if not self._rx:
                return None
            data = bytes(self._rx)
            self._rx = bytearray()
        return data

    def write(self, data):
        """Notify ``data`` to the subscribed central in MTU - 3 byte pieces; return the bytes sent."""
        n = len(data)
        if not self.connected or self._bus is None or self.closed:
            self.tx_dropped += n
            return 0
        import asyncio

        fut = asyncio.run_coroutine_threadsafe(self._notify(bytes(data)), self._loop)
        try:
            sent = fut.result(self._write_timeout_s)
        except Exception:
            fut.cancel()
            sent = 0
        if sent < n:
            self.tx_dropped += n - sent
        return sent

    def close(self):
        """Unregister the advertisement and the application from BlueZ, leave the bus."""
        if self.closed:
            return
        self._shutdown(max(self._start_timeout_s, 5.0))
        self.connected = False
        self.closed = True
