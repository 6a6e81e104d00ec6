package inspect

import (
	"encoding/binary"
	"fmt"
)

// VDIDetails are the facts of a VirtualBox VDI header.
type VDIDetails struct {
	// Version is the header version, "1.1" for every image qemu can open.
	Version string `json:"version"`
	// ImageType is "dynamic", "static", "undo", "differencing" or "unknown(N)".
	ImageType string `json:"image_type"`
	// BlockSize is the size of a data block in bytes (qemu supports only 1 MiB).
	BlockSize int64 `json:"block_size"`
	// BlocksInImage is the number of entries of the block map.
	BlocksInImage uint32 `json:"blocks_in_image"`
	// BlocksAllocated is the number of blocks stored in the file.
	BlocksAllocated uint32 `json:"blocks_allocated"`
	// UUID identifies the image.
	UUID string `json:"uuid"`
	// ParentUUID identifies the image a differencing image reads through.
	ParentUUID string `json:"parent_uuid,omitempty"`
	// LinkUUID identifies the image a differencing image was linked to.
	LinkUUID string `json:"link_uuid,omitempty"`
	// Description is the free-text comment of the header.
	Description string `json:"description,omitempty"`
}

const (
	vdiSignature     = 0xbeda107f
	vdiVersion11     = 0x00010001
	vdiHeaderLen     = 512                         // what qemu reads as the header
	vdiPreHeaderLen  = 0x48                        // text, signature, version
	vdiMinHeaderSize = 0x180                       // VirtualBox's VDIHEADER1
	vdiBlockSize     = 1 << 20                     // the only block size qemu supports
	vdiMaxBlocks     = 0x3fffffff                  // qemu's VDI_BLOCKS_IN_IMAGE_MAX
	vdiMaxDiskSize   = vdiMaxBlocks * vdiBlockSize // qemu's VDI_DISK_SIZE_MAX
)

// probeVDI recognises a VirtualBox VDI image by the signature at 0x40 and checks its header as
// qemu's block/vdi.c (and VirtualBox) do.
func probeVDI(s *src) (*finding, error) {
	h, err := s.at(0, vdiHeaderLen)
	if err != nil && !isTruncated(err) {
		return nil, err
	}
	le := binary.LittleEndian
	if len(h) < 0x44 || le.Uint32(h[0x40:]) != vdiSignature {
		return nil, nil
	}
	d := &VDIDetails{}
	f := newFinding(VDI, d)
	if len(h) < 0x48 {
		return f, err
	}
	version := le.Uint32(h[0x44:])
	d.Version = fmt.Sprintf("%d.%d", version>>16, version&0xffff)
	if version != vdiVersion11 {
		f.add(CodeUnsupportedVersion, "VDI version %s is not supported by qemu", d.Version)
		return f, nil
	}
	if len(h) < vdiHeaderLen {
		return f, err
	}

	hdrSize := le.Uint32(h[0x48:])
	imgType := le.Uint32(h[0x4c:])
	d.Description = printable(cstring(h[0x54:0x154]))
	bmapOff := uint64(le.Uint32(h[0x154:]))
	dataOff := uint64(le.Uint32(h[0x158:]))
	sectorSize := le.Uint32(h[0x168:])
	diskSize := le.Uint64(h[0x170:])
	blockSize := le.Uint32(h[0x178:])
	blocks := le.Uint32(h[0x180:])
	allocated := le.Uint32(h[0x184:])
	d.BlockSize = int64(blockSize)
	d.BlocksInImage = blocks
	d.BlocksAllocated = allocated
	d.UUID = vdiUUID(h[0x188:0x198])
	link, parent := h[0x1a8:0x1b8], h[0x1b8:0x1c8]

	switch imgType {
	case 1:
		d.ImageType = "dynamic"
	case 2:
		d.ImageType = "static"
	case 3:
		d.ImageType = "undo"
		f.add(CodeBackingFile, "VDI undo image: its content depends on a parent image")
	case 4:
		d.ImageType = "differencing"
		f.add(CodeBackingFile, "VDI differencing image: it reads through a parent image")
	default:
		d.ImageType = fmt.Sprintf("unknown(%d)", imgType)
		f.add(CodeInvalidHeader, "unknown VDI image type %d", imgType)
	}
	if !vdiNullUUID(parent) {
		d.ParentUUID = vdiUUID(parent)
		f.add(CodeBackingFile, "VDI image has a parent image %s", d.ParentUUID)
	}
	if !vdiNullUUID(link) {
		d.LinkUUID = vdiUUID(link)
		f.add(CodeBackingFile, "VDI image is linked to image %s", d.LinkUUID)
	}

	// qemu rounds an odd disk size (VBoxManage convertfromraw writes them) up to a sector.
	if diskSize > vdiMaxDiskSize {
		f.add(CodeInvalidHeader, "disk size %d exceeds qemu's maximum %d", diskSize, uint64(vdiMaxDiskSize))
	} else {
		diskSize = (diskSize + 511) &^ 511
		f.vsize = int64(diskSize)
	}
	if sectorSize != 512 {
		f.add(CodeInvalidHeader, "sector size %d is not 512", sectorSize)
	}
	if blockSize != vdiBlockSize {
		f.add(CodeInvalidHeader, "block size %d is not 1 MiB, the only size qemu supports", blockSize)
	}
	if blocks > vdiMaxBlocks {
		f.add(CodeInvalidHeader, "%d blocks exceed qemu's maximum %d", blocks, vdiMaxBlocks)
	}
	if diskSize <= vdiMaxDiskSize && diskSize > uint64(blocks)*uint64(blockSize) {
		f.add(CodeInvalidHeader, "disk size %d exceeds the %d blocks of %d bytes the block map covers", diskSize, blocks, blockSize)
	}
	if allocated > blocks {
		f.add(CodeInvalidHeader, "%d blocks allocated out of %d", allocated, blocks)
	}
	if hdrSize < vdiMinHeaderSize {
		f.add(CodeInvalidHeader, "header size %d is below %d", hdrSize, vdiMinHeaderSize)
	}
	bmapEnd := bmapOff + 4*uint64(blocks)
	switch {
	case bmapOff%512 != 0 || dataOff%512 != 0:
		f.add(CodeInvalidHeader, "block map offset %d or data offset %d is not sector aligned", bmapOff, dataOff)
	case bmapOff < vdiPreHeaderLen+uint64(hdrSize):
		f.add(CodeInvalidHeader, "block map at %d overlaps the header", bmapOff)
	case dataOff < bmapEnd:
		f.add(CodeInvalidHeader, "data at %d overlaps the block map ending at %d", dataOff, bmapEnd)
	}

	// The block map and the allocated blocks must lie inside the data.
	size, err := s.size()
	if err != nil {
		return f, err
	}
	dataEnd := dataOff + uint64(allocated)*uint64(blockSize)
	switch {
	case bmapEnd > uint64(size):
		f.add(CodeTruncated, "block map at %d (%d entries) lies past the end of the data at %d", bmapOff, blocks, size)
	case dataEnd > uint64(size):
		f.add(CodeTruncated, "%d allocated blocks from %d end at %d, past the end of the data at %d", allocated, dataOff, dataEnd, size)
	}
	return f, nil
}

// vdiUUID formats a UUID stored as VirtualBox does: the first three fields little-endian.
func vdiUUID(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

// vdiNullUUID reports whether every byte of the UUID b is zero.
func vdiNullUUID(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
