import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { joinDefinition, splitDefinition } from '../../lib/definition.js';
import { attributeOf, childrenNamed, firstChild, parseXmlTree, serializeXml, type XmlElement } from '../../lib/domain-xml.js';

/** A gaming VM as the desktop's libvirt prints it: a GPU passed through, a bridge, VNC on every address. */
const DESKTOP = `<domain type='kvm'>
  <name>games</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='KiB'>16777216</memory>
  <vcpu placement='static'>8</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/games.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/virtio-win.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <virtualport type='openvswitch'/>
      <model type='virtio'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:aa:bb:cc'/>
      <model type='e1000e'/>
    </interface>
    <graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>
    </hostdev>
    <interface type='hostdev' managed='yes'>
      <mac address='52:54:00:00:00:01'/>
      <source><address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source>
    </interface>
    <memballoon model='virtio'/>
  </devices>
</domain>`;

const NOT_PER_HOST = { cpuPerHost: false };
const text = serializeXml;
const devicesOf = (domain: XmlElement) => firstChild(domain, 'devices') as XmlElement;

describe('splitDefinition', () => {
  it("keeps the emulator, passthrough, network sources, listen addresses and disk paths as this host's own", async () => {
    const { portable, host } = splitDefinition(await parseXmlTree(DESKTOP), undefined, NOT_PER_HOST);
    const devices = devicesOf(portable);
    assert.deepEqual(childrenNamed(devices, 'emulator'), [], 'no emulator travels');
    assert.deepEqual(childrenNamed(devices, 'hostdev'), [], 'no GPU travels');
    assert.deepEqual(
      childrenNamed(devices, 'interface').map((i) => [attributeOf(i, 'type'), i.children.map((c) => c.qualifiedName).join(','), attributeOf(firstChild(i, 'source'), 'network')]),
      [
        ['network', 'mac,source,model', 'default'],
        ['network', 'mac,source,model', 'default'],
      ],
      "the bridge and user networking become libvirt's default network in their place; the passed-through NIC is gone",
    );
    const graphics = firstChild(devices, 'graphics') as XmlElement;
    assert.equal(attributeOf(graphics, 'listen'), undefined);
    assert.deepEqual(childrenNamed(graphics, 'listen'), []);
    assert.equal(attributeOf(graphics, 'autoport'), 'yes', 'the rest of <graphics> travels');
    assert.match(text(portable), /<memory unit='KiB'>16777216<\/memory>/u, 'memory travels');
    assert.match(text(portable), /<cpu mode='host-passthrough'/u, 'the CPU travels unless cpuPerHost');
    assert.match(text(portable), /<source file='\/var\/lib\/libvirt\/images\/games\.qcow2'\/>/u, 'a disk first seen here proposes its path');

    assert.deepEqual(
      host.children.map((c) => c.qualifiedName),
      ['uuid', 'emulator', 'disk', 'disk', 'interface', 'interface', 'graphics', 'passthrough'],
    );
    assert.equal(host.children[1]?.text, '/usr/bin/qemu-system-x86_64');
    assert.deepEqual(childrenNamed(host, 'disk').map((d) => [attributeOf(d, 'target'), attributeOf(d, 'file')]), [
      ['vda', '/var/lib/libvirt/images/games.qcow2'],
      ['sda', '/iso/virtio-win.iso'],
    ]);
    assert.match(text(host), /<interface mac='52:54:00:12:34:56' type='bridge'>\n {4}<source bridge='br0'\/>\n {4}<virtualport type='openvswitch'\/>/u);
    assert.match(text(host), /<interface mac='52:54:00:aa:bb:cc' type='user'\/>/u);
    assert.match(text(host), /<graphics type='vnc' listen='0\.0\.0\.0'>\n {4}<listen type='address' address='0\.0\.0\.0'\/>/u);
    assert.deepEqual(firstChild(host, 'passthrough')?.children.map((c) => `${c.qualifiedName} ${attributeOf(c, 'type')}`), ['hostdev pci', 'interface hostdev']);
  });

  it('leaves the portable part as it was when only this host\'s own part differs (another host\'s paths, bridge, emulator)', async () => {
    const desk = splitDefinition(await parseXmlTree(DESKTOP), undefined, NOT_PER_HOST);
    const laptopXml = DESKTOP.replace('/var/lib/libvirt/images/games.qcow2', '/home/vm/games.qcow2')
      .replace("<source bridge='br0'/>", "<source network='nat'/>")
      .replace("<interface type='bridge'>", "<interface type='network'>")
      .replace("listen='0.0.0.0'", "listen='127.0.0.1'")
      .replace('/usr/bin/qemu-system-x86_64', '/usr/libexec/qemu-kvm')
      .replace('4dea22b3-1d52-d8f3-2516-782e98ab3fa0', '0a1b2c3d-0000-4000-8000-00000000beef') // defined by hand there
      .replace("<domain type='kvm'>", "<domain type='kvm' id='3'>"); // as a start's hook gets it
    const laptop = splitDefinition(await parseXmlTree(laptopXml), desk.portable, NOT_PER_HOST);
    assert.equal(text(laptop.portable), text(desk.portable));
    assert.match(text(laptop.host), /<disk target='vda' file='\/home\/vm\/games\.qcow2'\/>/u);
    assert.match(text(laptop.host), /<uuid>0a1b2c3d-0000-4000-8000-00000000beef<\/uuid>/u);
    assert.match(text(joinDefinition(desk.portable, laptop.host)), /<uuid>0a1b2c3d-0000-4000-8000-00000000beef<\/uuid>/u, 'each host keeps its own UUID');
    const memory = splitDefinition(await parseXmlTree(laptopXml.replace('16777216', '8388608')), desk.portable, NOT_PER_HOST);
    assert.notEqual(text(memory.portable), text(desk.portable), 'a change of memory is a change of the portable part');
  });

  it('gives a portable part that splits into itself: what a host checks a definition from the NAS by', async () => {
    const { portable } = splitDefinition(await parseXmlTree(DESKTOP), undefined, NOT_PER_HOST);
    assert.equal(text(splitDefinition(portable, portable, NOT_PER_HOST).portable), text(portable));
    const forged = await parseXmlTree(text(portable).replace("<source network='default'/>", "<source network='default'/><virtualport type='openvswitch'/>"));
    assert.notEqual(text(splitDefinition(forged, forged, NOT_PER_HOST).portable), text(forged), 'a connection of its own is no portable part');
  });

  it('with cpuPerHost, keeps <cpu> here and leaves the portable part its earlier <cpu>', async () => {
    const first = splitDefinition(await parseXmlTree(DESKTOP), undefined, { cpuPerHost: true });
    assert.match(text(first.host), /<cpu mode='host-passthrough'/u);
    assert.match(text(first.portable), /<cpu mode='host-passthrough'/u, 'the first host proposes its own');
    const other = await parseXmlTree(DESKTOP.replace("<cpu mode='host-passthrough' check='none' migratable='on'/>", "<cpu mode='host-model'/>"));
    const again = splitDefinition(other, first.portable, { cpuPerHost: true });
    assert.equal(text(again.portable), text(first.portable));
    assert.match(text(again.host), /<cpu mode='host-model'\/>/u);
    assert.match(text(splitDefinition(other, first.portable, NOT_PER_HOST).portable), /<cpu mode='host-model'\/>/u, 'without it, the CPU travels');
  });
});

describe('joinDefinition', () => {
  it("puts this host's own part back: split and join give the definition this host had", async () => {
    const { portable, host } = splitDefinition(await parseXmlTree(DESKTOP), undefined, NOT_PER_HOST);
    const joined = joinDefinition(portable, host);
    const devices = devicesOf(joined);
    assert.equal(firstChild(devices, 'emulator')?.text, '/usr/bin/qemu-system-x86_64');
    assert.deepEqual(
      childrenNamed(devices, 'interface').map((i) => text(i)),
      childrenNamed(devicesOf(await parseXmlTree(DESKTOP)), 'interface').map((i) => text(i)),
      'the bridge with its virtualport in place, the NIC passed through',
    );
    assert.equal(text(firstChild(devices, 'graphics') as XmlElement), text(firstChild(devicesOf(await parseXmlTree(DESKTOP)), 'graphics') as XmlElement));
    assert.equal(childrenNamed(devices, 'hostdev').length, 1);
    // libvirt puts the elements in its own order when it defines it: what counts is that nothing moves between the parts.
    const again = splitDefinition(joined, portable, NOT_PER_HOST);
    assert.equal(text(again.portable), text(portable));
    assert.equal(text(again.host), text(host));
  });

  it('on another host: none of the first host\'s own part; a disk it has no path for goes into newDiskDir', async () => {
    const { portable } = splitDefinition(await parseXmlTree(DESKTOP), undefined, NOT_PER_HOST);
    const laptopHost = await parseXmlTree(`<host><emulator>/usr/libexec/qemu-kvm</emulator><disk target='vda' file='/home/vm/games.qcow2'/></host>`);
    const joined = joinDefinition(portable, laptopHost, { newDiskDir: '/home/vm' });
    const xml = text(joined);
    assert.doesNotMatch(xml, /hostdev|br0|0\.0\.0\.0|qemu-system-x86_64/u);
    assert.match(xml, /<emulator>\/usr\/libexec\/qemu-kvm<\/emulator>/u);
    assert.match(xml, /<source file='\/home\/vm\/games\.qcow2'\/>/u);
    assert.match(xml, /<source file='\/home\/vm\/virtio-win\.iso'\/>/u, 'a disk new to this host: its file name in newDiskDir');
    assert.match(xml, /<interface type='network'>\n {6}<mac address='52:54:00:12:34:56'\/>\n {6}<source network='default'\/>/u);
    assert.equal(text(joinDefinition(portable, undefined)), text(portable), 'nothing of its own: the portable part as it is');
  });
});
