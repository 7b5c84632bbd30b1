// Our XML namespace in a domain's <metadata>. Its presence makes a domain managed:
//
//   <metadata>
//     <kss:sync xmlns:kss="urn:kvm-snapshot-sync:domain:1"/>
//   </metadata>
//
// A URN, because it only names things: nothing is ever fetched from it. The trailing
// number is the version of what may appear inside the element.
// This module imports nothing, so that the hook can test for the namespace before it
// loads an XML parser.

export const NAMESPACE_URI = 'urn:kvm-snapshot-sync:domain:1';
export const METADATA_ELEMENT = 'sync';
export const METADATA_PREFIX = 'kss';

/** Cheap necessary condition for a managed domain: the XML mentions our namespace. */
export function mentionsNamespace(xml: string): boolean {
  return xml.includes(NAMESPACE_URI);
}
