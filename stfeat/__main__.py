from stfeat.cli import main

main()
