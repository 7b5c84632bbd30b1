import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { XMLNS_URI, parseDomainXml, parseXmlTree, serializeXml, setDiskFormatQcow2, setDiskPaths, setEmulator, syncedDisks } from '../../lib/domain-xml.js';
import { DiskStateError } from '../../lib/errors.js';
import { NAMESPACE_URI, mentionsNamespace } from '../../lib/namespace.js';

const disks = `
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/work root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/work-home.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg/data'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/shared/scratch.qcow2'/>
      <target dev='vdd' bus='virtio'/>
      <shareable/>
    </disk>`;

function domainXml(metadata: string): string {
  return `<domain type='kvm'>
  <name>work</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <metadata>${metadata}</metadata>
  <devices>${disks}
  </devices>
</domain>`;
}

describe('parseDomainXml', () => {
  const managed: Array<[string, string, boolean]> = [
    ['our element, our prefix', `<kss:sync xmlns:kss="${NAMESPACE_URI}"/>`, true],
    ['our element, another prefix', `<x:sync xmlns:x="${NAMESPACE_URI}"/>`, true],
    ['our element beside another tool', `<other:thing xmlns:other="urn:other"/><kss:sync xmlns:kss="${NAMESPACE_URI}"/>`, true],
    ['no metadata', '', false],
    ['another element in our namespace', `<kss:other xmlns:kss="${NAMESPACE_URI}"/>`, false],
    ['our element name in another namespace', `<kss:sync xmlns:kss="urn:someone-else"/>`, false],
  ];
  for (const [name, metadata, expected] of managed) {
    it(`${name}: managed=${expected}`, async () => assert.equal((await parseDomainXml(domainXml(metadata))).managed, expected));
  }

  it('reads name, uuid and disks', async () => {
    const domain = await parseDomainXml(domainXml(''));
    assert.equal(domain.name, 'work');
    assert.equal(domain.uuid, '4dea22b3-1d52-d8f3-2516-782e98ab3fa0');
    assert.deepEqual(domain.disks[0], {
      target: 'vda',
      type: 'file',
      device: 'disk',
      path: '/var/lib/libvirt/images/work root.qcow2',
      format: 'qcow2',
      readonly: false,
      shareable: false,
    });
    assert.equal(domain.disks.length, 5);
  });

  it('syncs only writable, unshared file disks', async () => {
    const domain = await parseDomainXml(domainXml(''));
    assert.deepEqual(syncedDisks(domain).map((disk) => disk.target), ['vda', 'vdb']);
  });

  it('rejects what is not a domain', async () => {
    await assert.rejects(parseDomainXml('<network><name>default</name></network>'), DiskStateError);
    await assert.rejects(parseDomainXml('<domain><name>x'), DiskStateError);
    await assert.rejects(parseDomainXml('<domain/>'), /no <name>/);
  });
});

describe('mentionsNamespace', () => {
  it('is a cheap necessary condition', () => {
    assert.equal(mentionsNamespace(domainXml(`<kss:sync xmlns:kss="${NAMESPACE_URI}"/>`)), true);
    assert.equal(mentionsNamespace(domainXml('')), false);
  });
});

describe('editing libvirt XML as a tree', () => {
  it('switches the disks named to qcow2, and changes nothing else', async () => {
    const tree = await parseXmlTree(domainXml(''));
    const untouched = serializeXml(tree);
    setDiskFormatQcow2(tree, []);
    assert.equal(serializeXml(tree), untouched);
    setDiskFormatQcow2(tree, ['vdb', 'vdd']);
    const edited = await parseDomainXml(serializeXml(tree));
    assert.deepEqual(edited.disks.map((d) => d.format), ['qcow2', 'qcow2', undefined, undefined, 'qcow2'], 'vdb switched, vdd given a <driver>');
    assert.deepEqual(edited.disks.map((d) => d.path), (await parseDomainXml(domainXml(''))).disks.map((d) => d.path));
  });

  it('points the disks named at new files, escaping what XML needs', async () => {
    const tree = await parseXmlTree(domainXml(''));
    setDiskPaths(tree, { vda: "/srv/vm's & <images>/root.qcow2" });
    const xml = serializeXml(tree);
    assert.match(xml, /<source file='\/srv\/vm&apos;s &amp; &lt;images&gt;\/root\.qcow2'\/>/u);
    const parsed = await parseDomainXml(xml);
    assert.equal(parsed.disks[0]?.path, "/srv/vm's & <images>/root.qcow2");
    assert.equal(parsed.disks[1]?.path, '/var/lib/libvirt/images/work-home.img');
  });

  it('names another emulator, or adds one first in <devices>', async () => {
    const tree = await parseXmlTree("<domain type='kvm'><name>a</name><devices><emulator>/usr/libexec/qemu-kvm</emulator></devices></domain>");
    setEmulator(tree, '/opt/a&b');
    assert.equal((await parseXmlTree(serializeXml(tree))).children[1]?.children[0]?.text, '/opt/a&b');
    const none = await parseXmlTree("<domain type='kvm'><name>a</name><devices><disk/></devices></domain>");
    setEmulator(none, '/usr/bin/qemu-system-x86_64');
    assert.deepEqual(none.children[1]?.children.map((c) => [c.qualifiedName, c.text]), [['emulator', '/usr/bin/qemu-system-x86_64'], ['disk', '']]);
  });
});

describe('serializeXml', () => {
  it('writes what parseXmlTree reads back as the same tree: namespaces, escapes, line ends in text and attributes', async () => {
    const xml = `<domain type='kvm' xmlns:q='urn:q'>
  <name>a &amp; &lt;b&gt;</name>
  <description>two
lines	with "quotes" and 'apostrophes'</description>
  <metadata><q:x q:y='1&#10;2' z="it's"/></metadata>
  <devices><disk type='file'><source file='/a b/c'/></disk></devices>
</domain>`;
    const tree = await parseXmlTree(xml);
    const written = serializeXml(tree);
    assert.deepEqual(await parseXmlTree(written), tree);
    assert.equal(serializeXml(await parseXmlTree(written)), written, 'a fixpoint');
    assert.match(written, /^<domain type='kvm' xmlns:q='urn:q'>\n {2}<name>a &amp; &lt;b&gt;<\/name>\n/u, 'indented as libvirt writes it');
  });
});

describe('parseXmlTree', () => {
  it('keeps every element in order, with its namespace, attributes and text', async () => {
    const root = await parseXmlTree("<domain type='kvm' xmlns:q='urn:q'><name>a</name><q:x q:y='1'/><devices/><devices><disk/></devices></domain>");
    assert.deepEqual(
      root.children.map((c) => [c.qualifiedName, c.name, c.uri]),
      [['name', 'name', ''], ['q:x', 'x', 'urn:q'], ['devices', 'devices', ''], ['devices', 'devices', '']],
    );
    assert.deepEqual(root.attributes, [{ qualifiedName: 'type', uri: '', value: 'kvm' }, { qualifiedName: 'xmlns:q', uri: XMLNS_URI, value: 'urn:q' }]);
    assert.deepEqual(root.children[1]?.attributes, [{ qualifiedName: 'q:y', uri: 'urn:q', value: '1' }]);
    assert.equal(root.children[0]?.text, 'a');
    assert.equal(root.children[3]?.children[0]?.qualifiedName, 'disk', 'a second <devices> is there too');
  });

  it('rejects what is not XML', async () => {
    await assert.rejects(parseXmlTree(''), DiskStateError);
    await assert.rejects(parseXmlTree('<a><b/>'), DiskStateError);
    await assert.rejects(parseXmlTree('<!DOCTYPE a [<!ENTITY e "x">]><a v="&e;"/>'), DiskStateError);
  });
});
