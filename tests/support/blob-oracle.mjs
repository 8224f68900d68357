// An independent Azure Storage client for the tests: Microsoft's own
// @azure/storage-blob SDK, used to create sources and to read back what
// imgforge wrote, so imgforge's client is never checked against itself.
//
//   node blob-oracle.mjs create   URL FILE        page blob from a local file, non-zero pages only
//   node blob-oracle.mjs download URL FILE        whole blob to a file
//   node blob-oracle.mjs ranges   URL             valid page ranges, half-open, as JSON
//   node blob-oracle.mjs props    URL             blob type, length, metadata as JSON (null if missing)
//   node blob-oracle.mjs sas      URL             a read-only SAS URL valid for one hour
//   node blob-oracle.mjs sas-write URL            a write-only SAS URL valid for one hour
//
// Keys come from IMGFORGE_STORAGE_KEY_<ACCOUNT>, as for imgforge.
import { readFileSync, writeFileSync } from "node:fs";
import {
  PageBlobClient,
  StorageSharedKeyCredential,
  BlobSASPermissions,
  generateBlobSASQueryParameters,
} from "@azure/storage-blob";

const [cmd, url, file] = process.argv.slice(2);
const u = new URL(url);
const account = u.pathname.split("/")[1];
const key = process.env[`IMGFORGE_STORAGE_KEY_${account.toUpperCase()}`];
const cred = new StorageSharedKeyCredential(account, key);
const blob = new PageBlobClient(url, cred);
const PAGE = 512, CHUNK = 4 * 1024 * 1024;

async function ranges() {
  const out = [];
  for await (const page of blob.listPageRanges()) {
    out.push([page.start, page.end + 1]);
  }
  return out;
}

switch (cmd) {
  case "create": {
    const data = readFileSync(file);
    await blob.getContainerClient?.();
    const container = blob.url.split("/").slice(0, 5).join("/");
    const { ContainerClient } = await import("@azure/storage-blob");
    await new ContainerClient(container, cred).createIfNotExists();
    await blob.create(data.length);
    for (let off = 0; off < data.length; off += CHUNK) {
      const end = Math.min(off + CHUNK, data.length);
      let runStart = -1;
      for (let p = off; p <= end; p += PAGE) {
        const nonzero = p < end && data.subarray(p, p + PAGE).some((b) => b !== 0);
        if (nonzero && runStart < 0) runStart = p;
        if (!nonzero && runStart >= 0) {
          await blob.uploadPages(data.subarray(runStart, p), runStart, p - runStart);
          runStart = -1;
        }
      }
    }
    break;
  }
  case "download": {
    const buf = await blob.downloadToBuffer();
    writeFileSync(file, buf);
    break;
  }
  case "ranges":
    console.log(JSON.stringify(await ranges()));
    break;
  case "props": {
    try {
      const p = await blob.getProperties();
      console.log(JSON.stringify({ type: p.blobType, length: p.contentLength, metadata: p.metadata }));
    } catch (e) {
      if (e.statusCode === 404) console.log("null");
      else throw e;
    }
    break;
  }
  case "sas":
  case "sas-write": {
    const parts = u.pathname.split("/");
    const sas = generateBlobSASQueryParameters(
      {
        containerName: parts[2],
        blobName: decodeURIComponent(parts.slice(3).join("/")),
        permissions: BlobSASPermissions.parse(cmd === "sas" ? "r" : "w"),
        startsOn: new Date(Date.now() - 5 * 60 * 1000),
        expiresOn: new Date(Date.now() + 60 * 60 * 1000),
      },
      cred,
    ).toString();
    console.log(`${url}?${sas}`);
    break;
  }
  default:
    console.error(`unknown command ${cmd}`);
    process.exit(2);
}
